-- A new prompt on every request: the cache's miss path (lookup, then store) under load.
--   wrk -t1 -c50 -d8s -s benchmarks/wrk/chat_unique.lua http://127.0.0.1:8000
-- Compare a gateway with GATEWAY_CACHE=off, one with `[cache] semantic = false` and the default.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("BENCH_API_KEY") or "test-key-123")
-- wrk seeds Lua's generator the same way every run: without a seed of our own, the second run would
-- repeat the first one's prompts and be all exact hits.
math.randomseed(os.time() * 1000 + math.floor((os.clock() * 1e6) % 1000))
local run = math.random(1, 1000000000)
local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, "/v1/chat/completions", nil,
    '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Tell me fact number ' .. n ..
    ' about the benchmark run ' .. run .. '-' .. math.random(1, 1000000000) .. '"}]}')
end
