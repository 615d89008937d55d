"""Seed 000 (Managed HSM soft-delete and purge protection), every az command, through the
pinned az; each result checked against the service's state over its REST API. The key
commands run in both forms; the HSM-level ones (`az keyvault show | delete | list-deleted
--resource-type hsm | recover | purge | update-hsm`) go to the resource-manager endpoint
az-setup registers, with the seed's placeholders filled as the README says: subscription
`p11vault`, resource group `p11vault`, location `local`, HSM name `p11vault`.
"""

import datetime
import time
import urllib.request

import pytest

from conftest import GROUP, HSM, LOCATION, SUBSCRIPTION, Az, Service

SUB = ["--subscription", SUBSCRIPTION]
DAY = 86400


def when(text):
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_seed_000_keys(form_service):
    svc, az = form_service
    made = az.run("keyvault", "key", "create", *az.key("mykey"), "--kty", "EC-HSM")

    az.run("keyvault", "key", "delete", *SUB, *az.key("mykey"))
    assert svc.rest("GET", "/keys/mykey")[0] == 404
    status, deleted = svc.rest("GET", "/deletedkeys/mykey")
    assert status == 200 and deleted["key"]["kid"] == made["key"]["kid"]

    listed = az.run("keyvault", "key", "list-deleted", *SUB, *az.hsm())
    assert [d["kid"] for d in listed] == [made["key"]["kid"].rsplit("/", 1)[0]]
    assert listed[0]["recoveryId"] == deleted["recoveryId"]

    az.run("keyvault", "key", "recover", *SUB, *az.key("mykey", "deletedKeys"))
    status, live = svc.rest("GET", "/keys/mykey")
    assert status == 200 and live["key"]["kid"] == made["key"]["kid"]

    az.run("keyvault", "key", "delete", *SUB, *az.key("mykey"))
    az.run("keyvault", "key", "purge", *SUB, *az.key("mykey", "deletedKeys"))
    assert svc.rest("GET", "/deletedkeys/mykey")[0] == 404
    assert svc.rest("GET", "/keys/mykey")[0] == 404


@pytest.fixture(scope="module")
def protected(tmp_path_factory):
    """A service on the test clock, for the HSM level with purge protection."""
    base = tmp_path_factory.mktemp("hsm-protected")
    svc = Service(base / "svc", clock_file=base / "clock")
    az = Az(svc, "hsm-name", tmp_path_factory.mktemp("az-protected"))
    yield svc, az
    rc = svc.stop()
    assert rc == 0, svc.stderr_tail()


def show(az):
    return az.run("keyvault", "show", *SUB, "-g", GROUP, "--hsm-name", HSM)


def data_plane_refused(svc):
    status, body = svc.rest("GET", "/keys")
    assert status == 403, body
    assert body["error"]["innererror"]["code"] == "ManagedHsmDeleted", body


def test_seed_000_hsm_level_with_purge_protection(protected, tmp_path):
    svc, az = protected
    made = az.run("keyvault", "key", "create", *az.key("kept"), "--kty", "RSA-HSM")

    # Only the operator (the bootstrap administrator) may touch the HSM resource; a
    # principal with every key role may not.
    token = svc.cli("principal", "create", "--name", "app", "--role",
                    "Managed HSM Crypto Officer", "--role", "Managed HSM Crypto User",
                    "--role", "Managed HSM Administrator")
    app_token = tmp_path / "app.token"
    app_token.write_text(next(l for l in token.splitlines() if l.startswith("token="))[6:] + "\n")
    (tmp_path / "app").mkdir()
    app = Az(svc, "hsm-name", tmp_path / "app", token_file=str(app_token))
    for args in (["show", "-g", GROUP], ["delete", "-g", GROUP],
                 ["update-hsm", "-g", GROUP, "--enable-purge-protection", "true"]):
        err = app.fails("keyvault", *args, *SUB, "--hsm-name", HSM)
        assert "AuthorizationFailed" in err, err
    assert app.run("keyvault", "key", "show", *app.key("kept"))["key"]["kid"] == made["key"]["kid"]
    assert svc.rest("GET", "/settings/EnablePurgeProtection")[1]["value"] == "false"

    # az keyvault show --subscription … -g … --hsm-name …
    shown = show(az)
    props = shown["properties"]
    assert shown["name"] == HSM and shown["type"] == "Microsoft.KeyVault/managedHSMs"
    assert shown["id"] == (f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{GROUP}/providers/"
                           f"Microsoft.KeyVault/managedHSMs/{HSM}")
    assert props["enableSoftDelete"] is True
    assert props["enablePurgeProtection"] is False
    assert props["hsmUri"] == f"{svc.url}/"
    assert props["securityDomainProperties"]["activationStatus"] == "Active"
    assert props["initialAdminObjectIds"] == [svc.admin_id]
    # The retention the service applies is the one show reports.
    az.run("keyvault", "key", "create", *az.key("probe"), "--kty", "oct-HSM")
    az.run("keyvault", "key", "delete", *az.key("probe"))
    _, probe = svc.rest("GET", "/deletedkeys/probe")
    assert (probe["scheduledPurgeDate"] - probe["deletedDate"]) == props["softDeleteRetentionInDays"] * DAY

    # az keyvault update-hsm … --enable-purge-protection true: the data plane's setting.
    updated = az.run("keyvault", "update-hsm", *SUB, "-g", GROUP, "--hsm-name", HSM,
                     "--enable-purge-protection", "true")
    assert updated["properties"]["enablePurgeProtection"] is True
    assert svc.rest("GET", "/settings/EnablePurgeProtection")[1]["value"] == "true"
    assert show(az)["properties"]["enablePurgeProtection"] is True
    err = az.fails("keyvault", "update-hsm", *SUB, "-g", GROUP, "--hsm-name", HSM,
                   "--enable-purge-protection", "false")
    assert "PurgeProtectionCannotBeDisabled" in err, err
    assert svc.rest("GET", "/settings/EnablePurgeProtection")[1]["value"] == "true"

    # az keyvault delete: the whole HSM soft-deleted, every data-plane request refused.
    az.run("keyvault", "delete", *SUB, "-g", GROUP, "--hsm-name", HSM)
    data_plane_refused(svc)
    # The sign-in still answers (so the operator can recover it), and signing in again works.
    req = urllib.request.Request(az.env["IDENTITY_ENDPOINT"]
                                 + "?api-version=2019-08-01&resource=https://x")
    req.add_header("X-IDENTITY-HEADER", az.env["IDENTITY_HEADER"])
    with urllib.request.urlopen(req, context=svc.tls, timeout=30) as r:
        assert r.status == 200
    az.run("login", "--identity", "--allow-no-subscriptions")
    assert az.fails("keyvault", "key", "show", *az.key("kept"))
    assert "ResourceNotFound" in az.fails("keyvault", "show", *SUB, "-g", GROUP, "--hsm-name", HSM)

    # az keyvault list-deleted --resource-type hsm
    gone = az.run("keyvault", "list-deleted", *SUB, "--resource-type", "hsm")
    assert len(gone) == 1 and gone[0]["name"] == HSM
    assert gone[0]["properties"]["mhsmId"] == shown["id"]
    assert gone[0]["properties"]["purgeProtectionEnabled"] is True
    retention = when(gone[0]["properties"]["scheduledPurgeDate"]) - when(gone[0]["properties"]["deletionDate"])
    assert retention == props["softDeleteRetentionInDays"] * DAY

    # az keyvault purge: refused under purge protection; nothing is lost.
    err = az.fails("keyvault", "purge", *SUB, "--hsm-name", HSM, "--location", LOCATION)
    assert "PurgeProtectionEnabled" in err, err
    data_plane_refused(svc)

    # az keyvault recover --hsm-name … --location …: back as it was.
    az.run("keyvault", "recover", *SUB, "--hsm-name", HSM, "--location", LOCATION)
    status, kept = svc.rest("GET", "/keys/kept")
    assert status == 200 and kept["key"]["kid"] == made["key"]["kid"]
    assert az.run("keyvault", "list-deleted", *SUB, "--resource-type", "hsm") == []
    assert show(az)["properties"]["enablePurgeProtection"] is True

    # Deleted again and left: at the end of the retention the service purges it itself.
    az.run("keyvault", "delete", *SUB, "-g", GROUP, "--hsm-name", HSM)
    svc.advance_days(props["softDeleteRetentionInDays"] + 1)
    deadline = time.monotonic() + 30
    while az.run("keyvault", "list-deleted", *SUB, "--resource-type", "hsm") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert az.run("keyvault", "list-deleted", *SUB, "--resource-type", "hsm") == []
    status, body = svc.rest("GET", "/keys/kept")
    assert status == 404 and body["error"]["code"] == "ResourceNotFound", body


def test_seed_000_hsm_purge(service, tmp_path):
    """Without purge protection: delete, then purge (every command with the seed's options)."""
    svc = service
    az = Az(svc, "hsm-name", tmp_path)
    az.run("keyvault", "key", "create", *az.key("doomed"), "--kty", "EC-HSM")
    az.run("keyvault", "key", "create", *az.key("doomed-deleted"), "--kty", "oct-HSM")
    az.run("keyvault", "key", "delete", *az.key("doomed-deleted"))
    assert show(az)["properties"]["enablePurgeProtection"] is False

    az.run("keyvault", "delete", *SUB, "-g", GROUP, "--hsm-name", HSM)
    data_plane_refused(svc)
    # az keyvault purge --subscription … --hsm-name … --location …
    az.run("keyvault", "purge", *SUB, "--hsm-name", HSM, "--location", LOCATION)
    assert az.run("keyvault", "list-deleted", *SUB, "--resource-type", "hsm") == []
    assert "ResourceNotFound" in az.fails("keyvault", "show", *SUB, "-g", GROUP, "--hsm-name", HSM)
    for path in ("/keys/doomed", "/deletedkeys/doomed-deleted", "/keys"):
        status, body = svc.rest("GET", path)
        assert status == 404 and body["error"]["code"] == "ResourceNotFound", (path, body)
    # Nothing to recover, nothing to purge again.
    assert az.fails("keyvault", "recover", *SUB, "--hsm-name", HSM, "--location", LOCATION)
    assert az.fails("keyvault", "purge", *SUB, "--hsm-name", HSM, "--location", LOCATION)
