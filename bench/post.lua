-- wrk script: POST a 1 KiB JSON body (exactly 1024 bytes) with Content-Type application/json.
wrk.method = "POST"
wrk.body = '{"data":"' .. string.rep("x", 1024 - 11) .. '"}'
wrk.headers["Content-Type"] = "application/json"
