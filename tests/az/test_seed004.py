"""Seed 004 (full backup, full restore, selective key restore), every `az keyvault` command, in
both forms, through the pinned az; each result checked against the service's state over its
REST API and in its backup location (the data dir's `backups/{container}/{folder}`).

The seed's `-–key-name` (an en dash, which az refuses) runs as `--key-name`. The SAS tokens
are made as the seed makes them, by `az storage container generate-sas` (which computes them
locally), from the account key `az storage account keys list` reads; the container is made by
`az storage container create --account-key`. The service answers both (`src/http/storage.rs`):
its backup location is the one storage account `backup.storage_account` (here the seed's
`mhsmdemobackup`), whose key it keeps, and its containers are the location's directories. The
Blob service is called at `https://mhsmdemobackup.blob.localhost:PORT` (az-setup's storage
suffix), which az resolves through the test's hosts file in either form. The service's backup
location needs no credential: a SAS token and `--use-managed-identity true` are accepted alike.

The prerequisites' `az keyvault update-hsm --hsm-name … --mi-user-assigned …` runs as
written: the identity is recorded on the HSM resource and shown. Their `az keyvault create`
(whose text az refuses: `–l`, `-- retention-days`) runs corrected, and is refused with a 400:
a p11vault HSM is made when the service is first started, with its retention fixed then.
"""
import base64
import hashlib
import hmac
import json
import os
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request

from conftest import GROUP, HSM, LOCATION, SUBSCRIPTION, Az

ACCOUNT = "mhsmdemobackup"
# The service's storage account is named as the seed names it (conftest's form_service).
STORAGE_ACCOUNT = ACCOUNT
CONTAINER = "mhsmdemobackupcontainer"
STORAGE = ["--storage-account-name", ACCOUNT, "--blob-container-name", CONTAINER]


IDENTITY = ("/subscriptions/subid/resourcegroups/mhsmrgname/providers/Microsoft.ManagedIdentity/"
            "userAssignedIdentities/userassignedidentitynamefromstep2")


def sas_token(az, permissions):
    """The seed's: `end=$(date -u -d "500 minutes" '+%Y-%m-%dT%H:%MZ')`, then `sas=$(az storage
    container generate-sas -n … --account-name … --permissions … --expiry $end --account-key
    $skey -o tsv --subscription …)`."""
    end = subprocess.run(["date", "-u", "-d", "500 minutes", "+%Y-%m-%dT%H:%MZ"],
                         capture_output=True, text=True, check=True).stdout.strip()
    skey = list_key(az)
    sas = az.text("storage", "container", "generate-sas", "-n", CONTAINER, "--account-name",
                  ACCOUNT, "--permissions", permissions, "--expiry", end, "--account-key", skey,
                  "-o", "tsv", "--subscription", SUBSCRIPTION)
    fields = dict(f.split("=", 1) for f in sas.split("&"))
    assert sorted(fields["sp"]) == sorted(permissions) and fields["sr"] == "c", sas
    assert fields["sig"], sas
    return sas


def list_key(az):
    """The seed's `skey=$(az storage account keys list --query '[0].value' -o tsv
    --account-name … --subscription …)`."""
    return az.text("storage", "account", "keys", "list", "--query", "[0].value", "-o", "tsv",
                   "--account-name", ACCOUNT, "--subscription", SUBSCRIPTION)


def service_key(svc):
    """The account key as the service keeps it (its database's `meta` row)."""
    db = sqlite3.connect(f"file:{svc.data / 'p11vault.db'}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT v FROM meta WHERE k = 'storage_account_key'").fetchone()
    finally:
        db.close()
    return row[0] if row else None


def signed_put(svc, key, signed_for, sent_to):
    """A container create signed with Shared Key (Azure's documented string-to-sign) for
    `signed_for` and sent to `sent_to`, straight to the Blob host: (status, headers, body)."""
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime())
    # The verb, eleven empty standard headers, the x-ms- headers, the resource.
    to_sign = ("PUT\n" + "\n" * 11 + f"x-ms-date:{date}\nx-ms-version:2021-08-06\n"
               f"/{ACCOUNT}{signed_for}\nrestype:container")
    sig = base64.b64encode(hmac.new(base64.b64decode(key), to_sign.encode(), hashlib.sha256)
                           .digest()).decode()
    req = urllib.request.Request(f"{svc.url}{sent_to}?restype=container", method="PUT")
    req.add_header("Host", f"{ACCOUNT}.blob.localhost:{svc.url.rsplit(':', 1)[1]}")
    req.add_header("x-ms-date", date)
    req.add_header("x-ms-version", "2021-08-06")
    req.add_header("Authorization", f"SharedKey {ACCOUNT}:{sig}")
    try:
        with urllib.request.urlopen(req, context=svc.tls, timeout=60) as r:
            return r.status, r.headers, r.read().decode("utf-8-sig")
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read().decode("utf-8-sig")


def audit_actions(svc):
    return [(r["action"], r["outcome"], r["status"])
            for r in map(json.loads, (svc.data / "audit.log").read_text().splitlines())
            if r.get("action", "") and r["action"].startswith("Microsoft.Storage/")]


def test_seed_004_prerequisites(form_service):
    svc, az = form_service
    shown = az.run("keyvault", "update-hsm", "--hsm-name", HSM, "--mi-user-assigned", IDENTITY)
    assert list(shown["identity"]["userAssignedIdentities"]) == [IDENTITY]
    assert shown["identity"]["type"] == "UserAssigned"
    again = az.run("keyvault", "show", "--subscription", SUBSCRIPTION, "-g", GROUP, "--hsm-name", HSM)
    assert list(again["identity"]["userAssignedIdentities"]) == [IDENTITY]
    err = az.fails("keyvault", "create", "--hsm-name", HSM, "-g", GROUP, "-l", LOCATION,
                   "--retention-days", "7", "--administrators", svc.admin_id,
                   "--mi-user-assigned", IDENTITY)
    assert "BadParameter" in err and "retention" in err, err
    # Nothing changed: the retention of a deleted key is still the service's.
    az.run("keyvault", "key", "create", *az.key("probe"), "--kty", "oct-HSM")
    az.run("keyvault", "key", "delete", *az.key("probe"))
    _, probe = svc.rest("GET", "/deletedkeys/probe")
    assert probe["scheduledPurgeDate"] - probe["deletedDate"] == 90 * 86400
    az.run("keyvault", "key", "purge", *az.key("probe", "deletedKeys"))
    # `skey=$(az storage account keys list …)`: the key the service made for its location.
    assert service_key(svc) is None
    skey = list_key(az)
    assert skey == service_key(svc) and len(base64.b64decode(skey)) == 64, skey
    assert list_key(az) == skey
    # `az storage container create --account-name … --name … --account-key $skey`
    container = svc.data / "backups" / CONTAINER
    assert not container.exists()
    made = az.run("storage", "container", "create", "--account-name", ACCOUNT, "--name",
                  CONTAINER, "--account-key", skey, resolve=True)
    assert made == {"created": True}, made
    assert container.is_dir() and not any(container.iterdir())
    # Again: Azure's 409 ContainerAlreadyExists, which az reports as not created.
    again = az.run("storage", "container", "create", "--account-name", ACCOUNT, "--name",
                   CONTAINER, "--account-key", skey, resolve=True)
    assert again == {"created": False}, again
    err = az.fails("storage", "container", "create", "--account-name", ACCOUNT, "--name",
                   CONTAINER, "--account-key", skey, "--fail-on-exist", resolve=True)
    assert "ContainerAlreadyExists" in err or "already exists" in err, err

    # Refused: a wrong account key, and another account name; nothing is made.
    wrong = base64.b64encode(os.urandom(64)).decode()
    err = az.fails("storage", "container", "create", "--account-name", ACCOUNT, "--name",
                   "othercontainer", "--account-key", wrong, resolve=True)
    # az's message for Azure Storage's 403 AuthenticationFailed.
    assert "Authentication failure" in err and "invalid account key" in err, err
    assert not (svc.data / "backups" / "othercontainer").exists()
    err = az.fails("storage", "account", "keys", "list", "--account-name", "otheraccount",
                   "--subscription", SUBSCRIPTION)
    assert "not found" in err, err
    # A request signed for one container and sent for another: Azure Storage's 403, in its
    # XML shape; nothing is made.
    status, headers, body = signed_put(svc, skey, signed_for="/signedcontainer",
                                       sent_to="/changedcontainer")
    assert status == 403 and headers["x-ms-error-code"] == "AuthenticationFailed", (status, body)
    assert "<Error><Code>AuthenticationFailed</Code><Message>" in body, body
    assert not (svc.data / "backups" / "changedcontainer").exists()
    assert signed_put(svc, skey, "/signedcontainer", "/signedcontainer")[0] == 201
    assert (svc.data / "backups" / "signedcontainer").is_dir()
    actions = audit_actions(svc)
    write = "Microsoft.Storage/storageAccounts/blobServices/containers/write"
    assert ("Microsoft.Storage/storageAccounts/listkeys/action", "allowed", 200) in actions
    assert (write, "allowed", 201) in actions and (write, "allowed", 409) in actions
    assert sum(1 for a in actions if a[0] == write) == 4, actions
    refused = [r for r in map(json.loads, (svc.data / "audit.log").read_text().splitlines())
               if r["path"] == "/othercontainer"]
    assert refused and all(r["outcome"] == "unauthenticated" and r["status"] == 403
                           for r in refused), refused


def test_seed_004_only_the_operator_lists_the_account_key(form_service, tmp_path):
    svc, az = form_service
    token = svc.cli("principal", "create", "--name", "backup-app", "--role",
                    "Managed HSM Administrator", "--role", "Managed HSM Backup")
    app_token = tmp_path / "app.token"
    app_token.write_text(next(l for l in token.splitlines() if l.startswith("token="))[6:] + "\n")
    (tmp_path / "app").mkdir()
    app = Az(svc, az.form, tmp_path / "app", token_file=str(app_token))
    before = service_key(svc)
    err = app.fails("storage", "account", "keys", "list", "--query", "[0].value", "-o", "tsv",
                    "--account-name", ACCOUNT, "--subscription", SUBSCRIPTION)
    assert "AuthorizationFailed" in err, err
    assert service_key(svc) == before
    assert ("Microsoft.Storage/storageAccounts/read", "denied", 403) in audit_actions(svc)


def keys_of(svc):
    _, listed = svc.rest("GET", "/keys")
    return {k["kid"].rsplit("/", 1)[1]: k["kid"] for k in listed["value"]}


def latest_kid(svc, name):
    status, body = svc.rest("GET", f"/keys/{name}")
    return body["key"]["kid"] if status == 200 else None


def folder_of(svc, result):
    assert result["status"] == "Succeeded", result
    url = result["folderUrl"]
    assert url.startswith(f"https://{ACCOUNT}.blob.") and f"/{CONTAINER}/" in url, url
    folder = url.rsplit("/", 1)[1]
    assert folder.startswith("mhsm-p11vault-") and len(folder) == len("mhsm-p11vault-") + 14
    assert (svc.data / "backups" / CONTAINER / folder).is_dir()
    return folder


def test_seed_004_backup_and_restore(form_service):
    svc, az = form_service
    sas = sas_token(az, "crdw")
    # The key of the selective restore, and one more.
    rsa = az.run("keyvault", "key", "create", *az.key("rsa-key2"), "--kty", "RSA-HSM")
    az.run("keyvault", "key", "create", *az.key("ec-key"), "--kty", "EC-HSM", "--curve", "P-384")
    before = keys_of(svc)

    # Backup HSM using user assigned managed identity
    mi = az.run("keyvault", "backup", "start", "--use-managed-identity", "true", *az.hsm(),
                *STORAGE)
    mi_folder = folder_of(svc, mi)

    # Backup HSM using SAS token (a second after the first: folder names are to the second)
    time.sleep(1.1)
    sas_backup = az.run("keyvault", "backup", "start", *az.hsm(), *STORAGE,
                        "--storage-container-SAS-token", sas, "--subscription", SUBSCRIPTION)
    sas_folder = folder_of(svc, sas_backup)
    assert sas_folder != mi_folder

    # A key made after the backups: a full restore takes the HSM back to the backup's state.
    az.run("keyvault", "key", "create", *az.key("after-backup"), "--kty", "oct-HSM")
    az.run("keyvault", "key", "delete", *az.key("ec-key"))
    # The restore needs a full backup of the current state: one more.
    time.sleep(1.1)
    az.run("keyvault", "backup", "start", "--use-managed-identity", "true", *az.hsm(), *STORAGE)

    # Restore HSM using user assigned managed identity
    restored = az.run("keyvault", "restore", "start", *az.hsm(), *STORAGE, "--backup-folder",
                      mi_folder, "--use-managed-identity", "true")
    assert restored is None or restored["status"] == "Succeeded", restored
    assert keys_of(svc) == before
    assert svc.rest("GET", "/deletedkeys/ec-key")[0] == 404

    # Restore HSM using SAS token (the seed makes a read-and-list one for restores)
    sas = sas_token(az, "rl")
    az.run("keyvault", "key", "create", *az.key("after-restore"), "--kty", "oct-HSM")
    time.sleep(1.1)
    az.run("keyvault", "backup", "start", *az.hsm(), *STORAGE, "--storage-container-SAS-token", sas)
    restored = az.run("keyvault", "restore", "start", *az.hsm(), *STORAGE,
                      "--storage-container-SAS-token", sas, "--backup-folder", sas_folder)
    assert restored is None or restored["status"] == "Succeeded", restored
    assert keys_of(svc) == before

    # Selective key restore using user assigned managed identity: the key must be purged.
    az.run("keyvault", "key", "delete", *az.key("rsa-key2"))
    az.run("keyvault", "key", "purge", *az.key("rsa-key2", "deletedKeys"))
    assert latest_kid(svc, "rsa-key2") is None
    az.run("keyvault", "restore", "start", *az.hsm(), *STORAGE, "--backup-folder", mi_folder,
           "--use-managed-identity", "true", "--key-name", "rsa-key2")
    assert latest_kid(svc, "rsa-key2") == rsa["key"]["kid"]
    status, body = svc.rest("GET", "/keys/rsa-key2")
    assert body["key"]["n"].rstrip("=") == rsa["key"]["n"].replace("+", "-").replace("/", "_").rstrip("=")

    # Selective key restore using SAS token (`--key-name`; the seed's `-–key-name` has an en dash)
    az.run("keyvault", "key", "delete", *az.key("rsa-key2"))
    az.run("keyvault", "key", "purge", *az.key("rsa-key2", "deletedKeys"))
    az.run("keyvault", "restore", "start", *az.hsm(), *STORAGE, "--storage-container-SAS-token",
           sas, "--backup-folder", sas_folder, "--key-name", "rsa-key2")
    assert latest_kid(svc, "rsa-key2") == rsa["key"]["kid"]
    assert keys_of(svc) == before
