"""A local OAuth 2.1 authorization server for the tests, built with authlib: client credentials
grant, RFC 9068 JWT access tokens whose `aud` is the RFC 8707 `resource` asked for, RFC 8414
metadata and a JWKS that `rotate()` replaces. It runs in a thread of the test process on
127.0.0.1, over real HTTP. It stands in for a real issuer (Keycloak, Auth0...) that cannot run
here. `mint()` makes tokens with whatever is wrong with them, for the refusal tests.
"""
from __future__ import annotations

import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar
from urllib.parse import parse_qsl

from authlib.oauth2.rfc6749 import AuthorizationServer, ClientMixin, OAuth2Request
from authlib.oauth2.rfc6749.grants import ClientCredentialsGrant
from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc9068 import JWTBearerTokenGenerator
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey

os.environ.setdefault("AUTHLIB_INSECURE_TRANSPORT", "1")    # plain http on 127.0.0.1, for the test only


class Client(ClientMixin):
    def __init__(self, client_id: str, secret: str, scope: str) -> None:
        self.client_id, self.secret, self.scope = client_id, secret, scope

    def get_client_id(self) -> str:
        return self.client_id

    def get_allowed_scope(self, scope: str) -> str:
        allowed = set(self.scope.split())
        return " ".join(s for s in (scope or self.scope).split() if s in allowed)

    def check_client_secret(self, client_secret: str) -> bool:
        return client_secret == self.secret

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method in ("client_secret_basic", "client_secret_post")

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "client_credentials"


class _Request(OAuth2Request):
    def __init__(self, method: str, uri: str, headers: dict[str, str], form: dict[str, str]) -> None:
        super().__init__(method, uri, headers=headers)
        self.payload = BasicOAuth2Payload(form)
        self._form = form

    @property
    def form(self) -> dict[str, str]:
        return self._form


class _Issued(dict):
    """A token the server issued, as the revocation endpoint looks it up."""

    def check_client(self, client: Client) -> bool:
        return self.get("client_id") == client.client_id


class _Revocation(RevocationEndpoint):
    CLIENT_AUTH_METHODS: ClassVar[list[str]] = ["client_secret_basic", "client_secret_post"]

    def query_token(self, token_string: str, token_type_hint: str | None) -> _Issued | None:
        return next((t for t in self.server.owner.issued if t.get("access_token") == token_string), None)

    def revoke_token(self, token: _Issued, request: Any) -> None:
        self.server.owner.revoked.append(token["access_token"])


class _Tokens(JWTBearerTokenGenerator):
    def __init__(self, owner: OAuthServer) -> None:
        super().__init__(owner.issuer, alg="RS256", expires_generator=lambda client, grant: owner.lifetime)
        self.owner = owner

    def get_jwks(self) -> KeySet:
        return KeySet([self.owner._key])

    def get_audiences(self, client: Any, user: Any, scope: Any) -> str | list[str]:
        return self.owner.current_resource or client.get_client_id()


class _Server(AuthorizationServer):
    def __init__(self, owner: OAuthServer) -> None:
        super().__init__(scopes_supported=None)
        self.owner = owner

    def query_client(self, client_id: str) -> Client | None:
        return self.owner.clients.get(client_id)

    def save_token(self, token: dict[str, Any], request: Any) -> None:
        self.owner.issued.append(_Issued(token, client_id=request.client.client_id))

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        return None

    def create_oauth2_request(self, request: tuple[str, str, dict[str, str], dict[str, str]]) -> OAuth2Request:
        return _Request(*request)

    def handle_response(self, status: int, body: Any, headers: list[tuple[str, str]]) -> tuple[int, Any, Any]:
        return status, body, headers


class OAuthServer:
    def __init__(self, lifetime: int = 300) -> None:
        self.lifetime = lifetime
        self.clients: dict[str, Client] = {}
        self.issued: list[dict[str, Any]] = []
        self.revoked: list[str] = []         # access tokens revoked at /revoke (RFC 7009)
        self.jwks_fetches = 0
        self.current_resource: str | None = None
        self._lock = threading.Lock()
        self._key = RSAKey.generate_key(2048, parameters={"kid": "k1", "use": "sig", "alg": "RS256"}, private=True)
        self._generation = 1
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.issuer = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.server = _Server(self)
        self.server.register_grant(ClientCredentialsGrant)
        self.server.register_token_generator("default", _Tokens(self))
        self.server.register_endpoint(_Revocation)
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def add_client(self, client_id: str, secret: str, scope: str) -> None:
        self.clients[client_id] = Client(client_id, secret, scope)

    def public_jwks(self) -> dict[str, Any]:
        return KeySet([self._key]).as_dict(private=False)

    def rotate(self) -> str:
        """A new signing key; the JWKS publishes only it from now on."""
        self._generation += 1
        kid = f"k{self._generation}"
        self._key = RSAKey.generate_key(2048, parameters={"kid": kid, "use": "sig", "alg": "RS256"}, private=True)
        return kid

    def mint(self, claims: dict[str, Any], header: dict[str, Any] | None = None,
             key: RSAKey | None = None) -> str:
        now = int(time.time())
        body = {"iss": self.issuer, "sub": "client", "iat": now, "exp": now + 300, **claims}
        body = {k: v for k, v in body.items() if v is not None}
        return jwt.encode({"alg": "RS256", "kid": self._key.kid, "typ": "at+jwt", **(header or {})}, body,
                          key or self._key)

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _metadata(self) -> dict[str, Any]:
        # authorization_endpoint is announced because the SDK's metadata model requires one; this
        # server grants client credentials only, and /authorize answers 404.
        return {"issuer": self.issuer, "token_endpoint": f"{self.issuer}/token", "jwks_uri": f"{self.issuer}/jwks",
                "authorization_endpoint": f"{self.issuer}/authorize", "revocation_endpoint": f"{self.issuer}/revoke",
                "grant_types_supported": ["client_credentials"], "response_types_supported": ["code"],
                "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"]}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                return

            def _send(self, status: int, body: Any, headers: list[tuple[str, str]] | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                for name, value in headers or [("Content-Type", "application/json")]:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path == "/.well-known/oauth-authorization-server":
                    self._send(200, owner._metadata())
                elif self.path == "/jwks":
                    owner.jwks_fetches += 1
                    self._send(200, owner.public_jwks())
                else:
                    self._send(404, {"error": "not_found"})

            def do_POST(self) -> None:
                if self.path not in ("/token", "/revoke"):
                    self._send(404, {"error": "not_found"})
                    return
                length = int(self.headers.get("Content-Length", "0"))
                form = dict(parse_qsl(self.rfile.read(length).decode()))
                headers = {k: v for k, v in self.headers.items()}
                request = ("POST", owner.issuer + self.path, headers, form)
                with owner._lock:
                    if self.path == "/revoke":
                        status, body, out = owner.server.create_endpoint_response("revocation", request)
                    else:
                        owner.current_resource = form.get("resource")
                        status, body, out = owner.server.create_token_response(request)
                self._send(status, body, out)

        return Handler
