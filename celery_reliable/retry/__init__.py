"""Bounded retries: the policy (classification, backoff), budgets and breakers."""
