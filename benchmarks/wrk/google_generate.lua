-- Gemini generateContent, 30 tokens.
wrk.method = "POST"
wrk.path = "/v1beta/models/gemini-2.0-flash:generateContent"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["x-goog-api-key"] = "sim-key"
wrk.body = '{"contents":[{"role":"user","parts":[{"text":"Say hello to the benchmark in a few words"}]}]}'
