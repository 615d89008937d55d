"""Seed 004 (full backup, full restore, selective key restore), every `az keyvault` command, in
both forms, through the pinned az; each result checked against the service's state over its
REST API and in its backup location (the data dir's `backups/{container}/{folder}`).

The seed's `-–key-name` (an en dash, which az refuses) runs as `--key-name`. The SAS token
is one `az storage container generate-sas` would print; the service's backup location needs
no credential, so a SAS token and `--use-managed-identity true` are accepted alike.
"""

import datetime

from conftest import SUBSCRIPTION

ACCOUNT = "mhsmdemobackup"
CONTAINER = "mhsmdemobackupcontainer"
STORAGE = ["--storage-account-name", ACCOUNT, "--blob-container-name", CONTAINER]


def sas_token():
    end = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=500))
    return (f"se={end:%Y-%m-%dT%H:%MZ}&sp=crdw&sv=2022-11-02&sr=c"
            "&sig=dGhpcyBpcyBub3QgY2hlY2tlZCBieSB0aGUgc2VydmljZQ%3D%3D")


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
    sas = sas_token()
    # The key of the selective restore, and one more.
    rsa = az.run("keyvault", "key", "create", *az.key("rsa-key2"), "--kty", "RSA-HSM")
    az.run("keyvault", "key", "create", *az.key("ec-key"), "--kty", "EC-HSM", "--curve", "P-384")
    before = keys_of(svc)

    # Backup HSM using user assigned managed identity
    mi = az.run("keyvault", "backup", "start", "--use-managed-identity", "true", *az.hsm(),
                *STORAGE)
    mi_folder = folder_of(svc, mi)

    # Backup HSM using SAS token (a second after the first: folder names are to the second)
    import time
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

    # Restore HSM using SAS token
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
