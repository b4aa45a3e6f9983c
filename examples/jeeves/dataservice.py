"""Jeeves' data service: user records behind tokendealer access tokens.

Every request is verified locally against the dealer's published keys (fetched
once and cached): no call to the dealer per request. Reading needs the
``read`` scope, writing the ``write`` scope.

    python examples/jeeves/dataservice.py --issuer http://127.0.0.1:5000 --port 5001
"""

from __future__ import annotations

import argparse
import asyncio

from hypercorn.asyncio import serve
from hypercorn.config import Config
from quart import Quart, request

from tokendealer.verify import TokenAuth, TokenVerifier, current_token, require_token


def create_app(issuer: str) -> Quart:
    app = Quart("jeeves")
    TokenAuth(app, TokenVerifier(issuer=issuer, audience="jeeves"))
    users: dict[str, dict[str, str]] = {
        "1": {"id": "1", "name": "Bertie Wooster", "email": "bertie@drones.example"},
        "2": {"id": "2", "name": "Aunt Agatha", "email": "agatha@woollam.example"},
    }

    @app.get("/users")
    @require_token("read")
    async def list_users() -> dict:
        return {"users": list(users.values()), "served_to": current_token["client_id"]}

    @app.get("/users/<user_id>")
    @require_token("read")
    async def get_user(user_id: str) -> tuple[dict, int]:
        user = users.get(user_id)
        return (user, 200) if user else ({"error": "not_found"}, 404)

    @app.post("/users")
    @require_token("write")
    async def add_user() -> tuple[dict, int]:
        data = await request.get_json(silent=True) or {}
        name = data.get("name")
        if not isinstance(name, str) or not name.strip():
            return {"error": "invalid_request", "error_description": "name is required"}, 400
        user_id = str(len(users) + 1)
        users[user_id] = {"id": user_id, "name": name, "email": str(data.get("email", ""))}
        return users[user_id], 201

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="Jeeves' data service")
    parser.add_argument("--issuer", default="http://127.0.0.1:5000", help="the dealer's issuer")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5001)
    args = parser.parse_args()
    config = Config()
    config.bind = [f"{args.host}:{args.port}"]
    print(f"jeeves data service on http://{args.host}:{args.port}, tokens from {args.issuer}")
    asyncio.run(serve(create_app(args.issuer), config))


if __name__ == "__main__":
    main()
