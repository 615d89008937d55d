"""Seed 004 (full backup, full restore, selective key restore), every `az keyvault` command, in
both forms, through the pinned az; each result checked against the service's state over its
REST API and in its backup location (the data dir's `backups/{container}/{folder}`).

The seed's `-–key-name` (an en dash, which az refuses) runs as `--key-name`. The SAS tokens
are made as the seed makes them, by `az storage container generate-sas` (which computes them
locally), from an account key: the seed reads that key with `az storage account keys list`,
which asks Azure Storage's resource provider, and creates the container with `az storage
container create`, which calls Azure Storage; p11vault has neither (its backup location is a
directory, whose containers a backup makes), so those two do not run and the key is one of
the test's own. The service's backup location needs no credential: a SAS token and
`--use-managed-identity true` are accepted alike.

The prerequisites' `az keyvault update-hsm --hsm-name … --mi-user-assigned …` runs as
written: the identity is recorded on the HSM resource and shown. Their `az keyvault create`
(whose text az refuses: `–l`, `-- retention-days`) runs corrected, and is refused with a 400:
a p11vault HSM is made when the service is first started, with its retention fixed then.
"""

import base64
import os
import subprocess
import time

from conftest import GROUP, HSM, LOCATION, SUBSCRIPTION

ACCOUNT = "mhsmdemobackup"
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
    skey = base64.b64encode(os.urandom(64)).decode()
    sas = az.text("storage", "container", "generate-sas", "-n", CONTAINER, "--account-name",
                  ACCOUNT, "--permissions", permissions, "--expiry", end, "--account-key", skey,
                  "-o", "tsv", "--subscription", SUBSCRIPTION)
    fields = dict(f.split("=", 1) for f in sas.split("&"))
    assert sorted(fields["sp"]) == sorted(permissions) and fields["sr"] == "c", sas
    assert fields["sig"], sas
    return sas


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
    # `skey=$(az storage account keys list …)`: the resource manager has no storage accounts.
    err = az.fails("storage", "account", "keys", "list", "--query", "[0].value", "-o", "tsv",
                   "--account-name", ACCOUNT, "--subscription", SUBSCRIPTION)
    assert "ResourceNotFound" in err, err


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
