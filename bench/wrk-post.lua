-- wrk script for the POST /api/clusters benchmark (used by benches/kindler/m2_api.rs).
--
-- Every request declares a new cluster: a unique name and three host ports no other
-- cluster holds, since kindler refuses a port that another cluster uses (409).
-- Arguments after `--`: a name prefix, the port to count up from, and optionally
-- `statuses`: a diagnostic run that counts the answers by status and keeps the first
-- refusals' bodies, printed at the end (a response() callback slows wrk, so the measured
-- runs have none), and `limit=N`: the thread stops after N requests (wrk's shortest run is
-- a second, and the port space holds ~21,500 declarations; wrk's rate is over the time the
-- run really took).
-- Run it with one wrk thread (-t1): each thread has its own Lua state and counters.

local prefix = "w"
local port = 1024
local n = 0
local limit = nil

function init(args)
    if args[1] then prefix = args[1] end
    if args[2] then port = tonumber(args[2]) - 1 end
    for i = 3, #args do
        local l = string.match(args[i], "^limit=(%d+)$")
        if l then limit = tonumber(l) end
    end
    if args[3] == "statuses" then
        -- Globals, so that done() can fetch them from the thread.
        statuses = {}
        refusals = {}
        response = function(status, headers, body)
            statuses[status] = (statuses[status] or 0) + 1
            if status >= 300 and #refusals < 5 then
                refusals[#refusals + 1] = status .. " " .. string.sub(string.gsub(body or "", "%s+", " "), 1, 300)
            end
        end
    end
end

local function next_port()
    port = port + 1
    -- 30080 is the default node_port of every new cluster: were some cluster's host
    -- port there, every later POST would be refused.
    if port == 30080 then port = port + 1 end
    if port > 65535 then port = 1024 end
    return port
end

function request()
    n = n + 1
    if limit and n > limit then wrk.thread:stop() end
    local pf = next_port()
    local http = next_port()
    local https = next_port()
    local body = string.format(
        '{"name":"%s%d","provider":"k3d","pf_port":%d,"http_port":%d,"https_port":%d}',
        prefix, n, pf, http, https)
    return wrk.format("POST", "/api/clusters", { ["Content-Type"] = "application/json" }, body)
end

-- setup() and done() run in wrk's main Lua state, once per thread and once at the end.
local threads = {}

function setup(thread)
    threads[#threads + 1] = thread
end

function done(summary, latency, requests)
    for _, thread in ipairs(threads) do
        local counted = thread:get("statuses")
        if counted then
            for status, count in pairs(counted) do
                io.write(string.format("status %d: %d answers\n", status, count))
            end
            for _, refusal in ipairs(thread:get("refusals") or {}) do
                io.write("refused: " .. refusal .. "\n")
            end
        end
    end
end
