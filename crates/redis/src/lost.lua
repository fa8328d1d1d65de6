-- A sale Redis does not hold, which the records say exists: it may have been lost (a restart
-- without persistence, FLUSHALL) with reservations whose writes to the records were still on
-- their way. It is marked lost, to be rebuilt from the records no sooner than `rebuild_at`, once
-- every such write has landed or failed; until then reservations for it are refused as
-- "rebuilding" (503), never decided from stock that is not known.
--
-- KEYS: 1 meta
-- ARGV: 1 rebuild_at (us): when a rebuild may read the records, if the sale is not marked yet
-- Answers {"loaded"} when the sale is there, or {"lost", rebuild_at} with the time already
-- marked (the first marker's time wins).

if redis.call("HEXISTS", KEYS[1], "starts_at") == 1 then
  return {"loaded"}
end
redis.call("HSETNX", KEYS[1], "rebuild_at", ARGV[1])
return {"lost", redis.call("HGET", KEYS[1], "rebuild_at")}
