-- Anthropic Messages, 30 tokens.
wrk.method = "POST"
wrk.path = "/v1/messages"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["x-api-key"] = "sk-ant-sim"
wrk.headers["anthropic-version"] = "2023-06-01"
wrk.body = '{"model":"claude-3-5-haiku-20241022","max_tokens":256,"messages":[{"role":"user","content":"Say hello to the benchmark in a few words"}]}'
