-- wrk script: 16 requests in each write (HTTP/1.1 pipelining), for the
-- pipelined row of benches/run.sh. wrk counts every response.
init = function(args)
    local path = args[1] or "/1.0"
    local batch = {}
    for i = 1, 16 do
        batch[i] = wrk.format(nil, path)
    end
    pipelined = table.concat(batch)
end

request = function()
    return pipelined
end
