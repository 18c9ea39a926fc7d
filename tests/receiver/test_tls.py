"""TLS: a CA, server and client certificates made in the test; DCMTK sends with ``+tls``."""
from __future__ import annotations

import datetime
import ipaddress
import socket
from pathlib import Path

import pytest

from tests.dicom_fixtures import RunSpec, write_study
from tests.receiver.helpers import (
    dataset_bytes,
    echoscu,
    file_uids,
    needs_dcmtk,
    spooled,
    storescu,
    summary_frames,
    wait_for,
)

x509 = pytest.importorskip("cryptography.x509")
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: E402

pytestmark = needs_dcmtk


def _key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _write(folder: Path, name: str, key, cert) -> tuple[Path, Path]:
    key_path, cert_path = folder / f"{name}.key", folder / f"{name}.pem"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.TraditionalOpenSSL,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def _cert(subject: str, key, issuer_name, issuer_key, *, ca: bool, usage=None, san=None):
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(issuer_name or x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A self-signed CA, a server certificate for 127.0.0.1 and a client certificate."""
    folder = tmp_path_factory.mktemp("pki")
    ca_key = _key()
    ca = _cert("sifluoro test CA", ca_key, None, ca_key, ca=True)
    ca_name = ca.subject
    server_key, client_key = _key(), _key()
    server = _cert("localhost", server_key, ca_name, ca_key, ca=False,
                   usage=ExtendedKeyUsageOID.SERVER_AUTH,
                   san=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    client = _cert("CARM1", client_key, ca_name, ca_key, ca=False,
                   usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    _, ca_path = _write(folder, "ca", ca_key, ca)
    server_key_path, server_path = _write(folder, "server", server_key, server)
    client_key_path, client_path = _write(folder, "client", client_key, client)
    return {"ca": ca_path, "server": server_path, "server_key": server_key_path,
            "client": client_path, "client_key": client_key_path}


def test_storescu_over_tls_with_client_certificates(tmp_path, start_receiver, pki):
    specs = [RunSpec(0.0, n_frames=3), RunSpec(2.0, n_frames=2, transfer_syntax="rle")]
    paths = write_study(tmp_path / "study", specs)
    receiver = start_receiver(None, "--tls-cert", str(pki["server"]), "--tls-key",
                              str(pki["server_key"]), "--tls-ca", str(pki["ca"]))
    tls = ["+tls", str(pki["client_key"]), str(pki["client"]), "+cf", str(pki["ca"])]

    # a client that connects and never starts the handshake must not block the others
    with socket.create_connection(("127.0.0.1", receiver.port)):
        assert echoscu(receiver.port, *tls).returncode == 0
        for spec, path in zip(specs, paths):
            sent = storescu(receiver.port, [path], *tls,
                            "-xr" if spec.transfer_syntax == "rle" else "-xe")
            assert sent.returncode == 0, sent.stdout + sent.stderr

    # without TLS, or with TLS but no client certificate: no association
    assert echoscu(receiver.port).returncode != 0
    assert echoscu(receiver.port, "+tla", "-ic").returncode != 0
    assert echoscu(receiver.port, *tls).returncode == 0
    # each refused client is one warning line, not an ERROR and a traceback (user review s18)
    log = receiver.log()
    assert "Traceback" not in log and "ERROR" not in log
    assert log.count("WARNING pynetdicom.dul: TLS failed on a connection: [SSL: ") == 2

    study_uid = file_uids(paths[0])[0]
    wait_for(lambda: summary_frames(receiver.spool / study_uid / "summary.json") == 5)
    assert receiver.terminate() == 0
    for path in paths:
        assert dataset_bytes(spooled(receiver.spool, *file_uids(path))) == dataset_bytes(path)


def test_tls_without_client_verification_and_bad_key_files(tmp_path, start_receiver, pki):
    receiver = start_receiver(None, "--tls-cert", str(pki["server"]), "--tls-key",
                              str(pki["server_key"]))
    assert echoscu(receiver.port, "+tla", "+cf", str(pki["ca"])).returncode == 0
    with pytest.raises(RuntimeError, match="TLS certificate"):
        start_receiver(tmp_path / "other", "--tls-cert", str(pki["ca"]), "--tls-key",
                       str(pki["server_key"]))
