"""The serving stack of `oel serve` and `oel gateway`: one HTTP layer over an engine (and, in the gateway, a store).

    protocol.py   the OpenAI request/response bodies as pydantic models; RequestError and the error shape
    engine.py     who answers: LocalEngine (batched in-process model, hot swap, prompt limit, token
                  streaming, cancellation) or UpstreamEngine (another OpenAI-compatible server)
    app.py        the Starlette routes and the edge middleware (routing, keys, rate, body limits, errors)
    streaming.py  a streamed answer that cancels its generation and records what was sent if the client goes
    server.py     uvicorn (h11) in a thread on a TCP_NODELAY socket
    connection.py each connection's deadlines and lingering close, around uvicorn's protocol (no subclass)
    admission.py  keyed connections in slots, keyless ones in a pool bounded per address
    metrics.py    /metrics through prometheus_client
    edge.py       the one ASGI middleware every route shares (headers, keys, admission, rate, body,
                  write deadline, errors)
    auth.py       bearer-token API keys (digests only), shared by `oel serve` and `oel gateway`
    batcher.py    the bounded request queue and batching worker of LocalEngine
    chat_server.py ChatServer / `oel serve`: the stack over an in-process model, without a store
    cli.py        `oel serve`
"""
