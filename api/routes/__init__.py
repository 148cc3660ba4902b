"""One blueprint per area of the REST API (spec/rest-api.txt)."""
from __future__ import annotations

from sanic import Blueprint

from api.routes.acl import bp as acl
from api.routes.clients import bp as clients
from api.routes.credentials import bp as credentials
from api.routes.devices import bp as devices
from api.routes.docs import bp as docs
from api.routes.graph import bp as graph
from api.routes.manage import bp as manage
from api.routes.messages import bp as messages
from api.routes.session import bp as session

BLUEPRINTS: tuple[Blueprint, ...] = (session, messages, credentials, devices, graph, docs, acl,
                                     clients, manage)
