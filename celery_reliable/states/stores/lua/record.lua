-- Record a batch of transitions of one shard (record_lib.lua is prepended).
-- KEYS[1]: the shard's prefix "{p:st:S}:" (its hash tag routes the script)
-- ARGV[1]: retention in ms; ARGV[2]: a JSON list of transitions (see record_rows).
return record_rows(KEYS[1], ARGV[1], cjson.decode(ARGV[2]))
