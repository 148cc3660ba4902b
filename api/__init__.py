"""The REST API process (spec/rest-api.txt, CONTRACT.md "REST API").

A Sanic app built by :func:`api.app.create_app`, run by the supervisor as its
own process (:func:`api.app.run_api`). It reads LMDB for listings and asks the
workers over their control sockets for anything that touches a connection.
"""
