-- lock+redeem: lock my code, then redeem it with the lock_id; repeat (multi-use code).
-- Every run (BENCH_ROUND) uses its own codes, so a lock left by the previous run's last
-- request never blocks this one.
package.path = os.getenv("BENCH_LUA") .. "/?.lua;" .. package.path
require("common")

local me, phase, lock_id

function init(args)
  me = load_slot(os.getenv("BENCH_USERS"), slot)  -- token user_id
  base = os.getenv("BENCH_BASE") .. "/codes/LR-" .. os.getenv("BENCH_ROUND") .. "-" .. slot
  hdrs = headers_for(me[1], me[2])
  phase = "lock"
end

function request()
  if phase == "lock" then
    return wrk.format("POST", base .. "/lock", hdrs, "{}")
  end
  return wrk.format("POST", base .. "/redeem", hdrs, '{"lock_id": "' .. lock_id .. '"}')
end

function response(status, headers, body)
  count_status(status)
  if phase == "lock" then
    local id = string.match(body, '"lock_id"%s*:%s*"([^"]+)"')
    if id then lock_id = id; phase = "redeem" end
  else
    phase = "lock"
  end
end
