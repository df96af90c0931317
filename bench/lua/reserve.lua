-- reserve: POST /promos/{id}/reserve on one hot promo by a crowd of distinct users, nobody
-- buying. Each run (BENCH_RUN) has a promo of its own (line BENCH_RUN of BENCH_PROMOS), and
-- each connection walks its own slice of the crowd (BENCH_CROWD/<slot>.txt), so every
-- request is a new hold (201) by a user who holds nothing on that promo yet.
package.path = os.getenv("BENCH_LUA") .. "/?.lua;" .. package.path
require("common")

local crowd, at, path

function init(args)
  local promos = {}
  for line in io.lines(os.getenv("BENCH_PROMOS")) do promos[#promos + 1] = line end
  path = os.getenv("BENCH_BASE") .. "/promos/" .. promos[tonumber(os.getenv("BENCH_RUN"))]
    .. "/reserve"
  crowd = load_crowd(os.getenv("BENCH_CROWD"), slot)
  at = 0
end

function request()
  at = at % #crowd + 1
  return wrk.format("POST", path, crowd[at], "{}")
end

function response(status, headers, body)
  count_status(status)
end
