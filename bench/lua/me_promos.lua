-- me-promos: GET /me/promos, each connection cycling through its own slice of the users
-- placed at random over the stores' square (BENCH_CROWD/<slot>.txt).
package.path = os.getenv("BENCH_LUA") .. "/?.lua;" .. package.path
require("common")

local users, at, path

function init(args)
  path = os.getenv("BENCH_BASE") .. "/me/promos"
  users = load_crowd(os.getenv("BENCH_CROWD"), slot)
  at = 0
end

function request()
  at = at % #users + 1
  return wrk.format("GET", path, users[at])
end

function response(status, headers, body)
  count_status(status)
end
