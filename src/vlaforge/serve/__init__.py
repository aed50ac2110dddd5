"""Serving a policy to robots (`vlaforge serve`).

- `codec`: strict msgpack-numpy (openpi) and json-numpy (OpenVLA) decoders and encoders (numpy + msgpack).
- `observation`: wire keys -> the checkpoint's cameras, state and instruction, every value checked.
- `batcher`: requests from many connections batched into one forward pass on an inference thread.
- `server`: `ServeConfig`, the asyncio server (openpi websocket + OpenVLA `POST /act` on one port).
- `wsconn`: one websocket connection (websockets' sans-I/O protocol over asyncio streams).
- `fuzz`: malformed messages for the tests and `bench/bench_serve.py`.

The robot-side client is `vlaforge.client` (no torch).
"""
