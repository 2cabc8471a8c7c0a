"""What runs inside the worker: the bootstep, the heartbeat, the rescuer, transport defaults."""
