"""AMQPS with pika (RabbitMQ docs/ssl.md): a CA, a server certificate and a client certificate made
here with `cryptography`; publish and consume over TLS with a password; SASL EXTERNAL with the client
certificate (rabbitmq_auth_mechanism_ssl); plain and TLS listeners side by side."""
import datetime
import ipaddress
import ssl

import pika
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conftest import free_port


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Warren tests"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _issue(subject_cn, issuer_name, issuer_key, key, ca=False, san=None):
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder()
               .subject_name(_name(subject_cn))
               .issuer_name(issuer_name)
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path, cert=None, key=None):
    if cert is not None:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    else:
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(path)


@pytest.fixture
def tls_broker(configured_broker, tmp_path):
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _issue("Warren test CA", _name("Warren test CA"), ca_key, ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _issue("localhost", ca.subject, ca_key, server_key,
                    san=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = _issue("tls-user", ca.subject, ca_key, client_key)
    files = {
        "ca": _write(tmp_path / "ca.pem", cert=ca),
        "server": _write(tmp_path / "server.pem", cert=server),
        "server_key": _write(tmp_path / "server.key", key=server_key),
        "client": _write(tmp_path / "client.pem", cert=client),
        "client_key": _write(tmp_path / "client.key", key=client_key),
    }
    tls_port = free_port()
    broker = configured_broker(f"""
ssl_cert_login_from = "common_name"

[[users]]
name = "guest"
password = "guest"
tags = ["administrator"]

[[users]]
name = "tls-user"
password = "not-used-with-external"

[[permissions]]
user = "guest"
configure = ".*"
write = ".*"
read = ".*"

[[permissions]]
user = "tls-user"
configure = ".*"
write = ".*"
read = ".*"

[tls]
listen = ["127.0.0.1:{tls_port}"]
certfile = "{files['server']}"
keyfile = "{files['server_key']}"
cacertfile = "{files['ca']}"
verify = "verify_peer"
fail_if_no_peer_cert = false
""")
    broker.tls_port = tls_port
    broker.files = files
    return broker


def _tls_params(broker, client_cert=True, credentials=None):
    context = ssl.create_default_context(cafile=broker.files["ca"])
    if client_cert:
        context.load_cert_chain(broker.files["client"], broker.files["client_key"])
    return pika.ConnectionParameters(
        "127.0.0.1", broker.tls_port, "/",
        credentials or pika.PlainCredentials("guest", "guest"),
        ssl_options=pika.SSLOptions(context, "localhost"))


def test_publish_and_consume_over_tls_beside_a_plain_listener(tls_broker):
    tls = pika.BlockingConnection(_tls_params(tls_broker, client_cert=False))
    ch = tls.channel()
    ch.queue_declare("over-tls")
    ch.confirm_delivery()
    for i in range(100):
        ch.basic_publish("", "over-tls", f"m{i}".encode() * 100)
    # The plain listener serves the same broker at the same time.
    plain = tls_broker.connect()
    pch = plain.channel()
    method, _, body = pch.basic_get("over-tls", auto_ack=True)
    assert body == b"m0" * 100
    got = []
    for method, _, body in ch.consume("over-tls", auto_ack=True, inactivity_timeout=2):
        if method is None:
            break
        got.append(body)
        if len(got) == 99:
            break
    assert got == [f"m{i}".encode() * 100 for i in range(1, 100)]
    plain.close()
    tls.close()


def test_external_login_with_the_client_certificate(tls_broker):
    conn = pika.BlockingConnection(_tls_params(tls_broker, credentials=pika.credentials.ExternalCredentials()))
    ch = conn.channel()
    ch.queue_declare("external")
    # Validated user_id: the broker accepts only the logged-in user's name, so this proves who we are.
    ch.basic_publish("", "external", b"hi", pika.BasicProperties(user_id="tls-user"))
    method, props, body = ch.basic_get("external", auto_ack=True)
    assert (body, props.user_id) == (b"hi", "tls-user")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
        ch.basic_publish("", "external", b"x", pika.BasicProperties(user_id="guest"))
        ch.basic_get("external")
    assert refused.value.reply_code == 406
    conn.close()


def test_external_is_not_offered_without_a_client_certificate(tls_broker):
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        pika.BlockingConnection(_tls_params(tls_broker, client_cert=False,
                                            credentials=pika.credentials.ExternalCredentials()))
    # Nor on the plain listener.
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        pika.BlockingConnection(pika.ConnectionParameters(
            "127.0.0.1", tls_broker.port, "/", pika.credentials.ExternalCredentials()))
