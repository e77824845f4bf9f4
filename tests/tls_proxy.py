"""A real TLS terminator on loopback, for tests: what an ingress does in front of the service.

``TlsProxy`` accepts TLS (ALPN ``h2``, so gRPC clients accept it) with a certificate of a private
CA made for the test, and forwards the decrypted bytes to a plaintext port, as ingress-nginx or
Envoy forwards gRPC to ``GRPC_PORT``. It records the SNI names clients sent.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
import threading
from pathlib import Path
from types import TracebackType

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def write_private_ca(directory: Path, server_name: str) -> tuple[Path, Path, Path]:
    """A CA and a server certificate it signs for ``server_name`` (a DNS name; an IP address's
    certificate names the IP), written as PEM: (CA certificate, server certificate, its key)."""
    now = datetime.datetime.now(datetime.UTC)
    valid = (now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1))
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("test private CA"))
        .issuer_name(_name("test private CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    try:
        alt_name: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(server_name))
    except ValueError:
        alt_name = x509.DNSName(server_name)
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(server_name))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .add_extension(x509.SubjectAlternativeName([alt_name]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    paths = (directory / "ca.pem", directory / "server.pem", directory / "server-key.pem")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


class TlsProxy:
    """Terminates TLS on a free loopback port and forwards each connection to ``backend_port``.

    Runs its own asyncio loop in a thread; use it as a context manager. ``port`` is where it
    listens, ``server_names`` the SNI names of the handshakes it saw (None: no SNI).
    """

    def __init__(self, backend_port: int, certificate: Path, key: Path) -> None:
        self.backend_port = backend_port
        self.server_names: list[str | None] = []
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(certificate, key)
        # gRPC clients refuse a TLS server that does not agree on HTTP/2.
        self.context.set_alpn_protocols(["h2"])
        self.context.sni_callback = self._record_server_name
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    def _record_server_name(self, _: ssl.SSLObject, name: str | None, __: ssl.SSLContext) -> None:
        self.server_names.append(name)

    def __enter__(self) -> TlsProxy:
        self._loop.set_exception_handler(lambda _, __: None)  # refused handshakes are the point
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._server is not None:
            self._server.close()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _serve(self) -> asyncio.Server:
        return await asyncio.start_server(self._forward, "127.0.0.1", 0, ssl=self.context)

    async def _forward(self, client: asyncio.StreamReader, to_client: asyncio.StreamWriter) -> None:
        try:
            backend, to_backend = await asyncio.open_connection("127.0.0.1", self.backend_port)
        except OSError:
            to_client.close()
            return
        await asyncio.gather(_pipe(client, to_backend), _pipe(backend, to_client))


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
    except (OSError, ssl.SSLError):
        pass
    finally:
        # One side done: close the other, as a proxy does (gRPC has no half-closed connections).
        sink.close()
