-- Gemini streamGenerateContent?alt=sse: 30 events.
wrk.method = "POST"
wrk.path = "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["x-goog-api-key"] = "sim-key"
wrk.body = '{"contents":[{"role":"user","parts":[{"text":"Say hello to the benchmark in a few words"}]}]}'
