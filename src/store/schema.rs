//! The database schema as an ordered list of migrations; `PRAGMA user_version` records how many
//! have run. A migration is never edited once released: add a new one.

use rusqlite::Connection;

use super::{Error, Result};

const MIGRATIONS: &[&str] = &[
    // 1: keys, versions, intents, principals, settings.
    r#"
    CREATE TABLE meta (
        k TEXT PRIMARY KEY,
        v TEXT NOT NULL
    );
    -- One row per key name. Names compare case-insensitively, as in Azure.
    CREATE TABLE keys (
        name                 TEXT PRIMARY KEY COLLATE NOCASE,
        created              INTEGER NOT NULL,
        deleted_date         INTEGER,
        scheduled_purge_date INTEGER
    );
    -- One row per key version; `id` is the CKA_ID of the version's token objects.
    CREATE TABLE versions (
        seq        INTEGER PRIMARY KEY AUTOINCREMENT,
        id         BLOB NOT NULL UNIQUE CHECK (length(id) = 16),
        name       TEXT NOT NULL COLLATE NOCASE REFERENCES keys(name),
        kind       TEXT NOT NULL,
        key_ops    TEXT NOT NULL,
        enabled    INTEGER NOT NULL,
        nbf        INTEGER,
        exp        INTEGER,
        created    INTEGER NOT NULL,
        updated    INTEGER NOT NULL,
        tags       TEXT NOT NULL,
        public_key TEXT NOT NULL,
        origin     TEXT NOT NULL
    );
    CREATE INDEX versions_by_name ON versions(name, seq);
    -- Token changes that are under way (DESIGN §6): written and committed before the token is
    -- touched, removed in the transaction that commits the outcome.
    CREATE TABLE intents (
        id      INTEGER PRIMARY KEY AUTOINCREMENT,
        op      TEXT NOT NULL,
        name    TEXT NOT NULL,
        version BLOB,
        payload TEXT NOT NULL,
        created INTEGER NOT NULL
    );
    CREATE TABLE principals (
        id         TEXT PRIMARY KEY,
        name       TEXT NOT NULL,
        token_hash BLOB NOT NULL UNIQUE,
        enabled    INTEGER NOT NULL,
        created    INTEGER NOT NULL
    );
    "#,
    // 2: purge protection, once on, can never be switched off — not even by a direct write to
    // the database.
    r#"
    CREATE TRIGGER purge_protection_cannot_be_disabled
    BEFORE UPDATE OF v ON meta
    WHEN OLD.k = 'purge_protection' AND OLD.v = 'true' AND NEW.v <> 'true'
    BEGIN
        SELECT RAISE(ABORT, 'purge protection cannot be disabled once enabled');
    END;
    CREATE TRIGGER purge_protection_cannot_be_removed
    BEFORE DELETE ON meta
    WHEN OLD.k = 'purge_protection' AND OLD.v = 'true'
    BEGIN
        SELECT RAISE(ABORT, 'purge protection cannot be disabled once enabled');
    END;
    CREATE INDEX keys_by_purge_date ON keys(scheduled_purge_date) WHERE deleted_date IS NOT NULL;
    "#,
    // 3: local RBAC. Built-in role definitions live in the code; only custom ones are stored.
    // A database made before RBAC gives its initial administrator the Administrator role, as a
    // fresh one does.
    r#"
    CREATE TABLE role_definitions (
        name              TEXT PRIMARY KEY COLLATE NOCASE,
        role_name         TEXT NOT NULL,
        description       TEXT NOT NULL,
        permissions       TEXT NOT NULL,
        assignable_scopes TEXT NOT NULL,
        created           INTEGER NOT NULL,
        updated           INTEGER NOT NULL
    );
    CREATE TABLE role_assignments (
        name            TEXT PRIMARY KEY COLLATE NOCASE,
        scope           TEXT NOT NULL,
        principal_id    TEXT NOT NULL COLLATE NOCASE,
        role_definition TEXT NOT NULL COLLATE NOCASE,
        created         INTEGER NOT NULL
    );
    CREATE INDEX role_assignments_by_principal ON role_assignments(principal_id);
    INSERT INTO role_assignments(name, scope, principal_id, role_definition, created)
    SELECT lower(substr(h, 1, 8) || '-' || substr(h, 9, 4) || '-4' || substr(h, 14, 3) || '-a'
                 || substr(h, 18, 3) || '-' || substr(h, 21, 12)),
           '/', id, 'a290e904-7015-4bba-90c8-60543313cdb4', created
    FROM (SELECT hex(randomblob(16)) AS h, id, created FROM principals WHERE name = 'administrator');
    "#,
    // 4: backups. `state_seq` counts every change to what a full backup holds (keys, versions,
    // role definitions and assignments), bumped by triggers so no write path can forget it: a
    // full restore is allowed only over a state some completed backup holds. `jobs` are the
    // long-running backup and restore operations, kept across restarts.
    r#"
    INSERT INTO meta(k, v) VALUES ('state_seq', '0') ON CONFLICT(k) DO NOTHING;
    CREATE TRIGGER state_seq_keys_insert AFTER INSERT ON keys
    BEGIN UPDATE meta SET v = CAST(v AS INTEGER) + 1 WHERE k = 'state_seq'; END;
    CREATE TRIGGER state_seq_keys_update AFTER UPDATE ON keys
    BEGIN UPDATE meta SET v = CAST(v AS INTEGER) + 1 WHERE k = 'state_seq'; END;
    CREATE TRIGGER state_seq_keys_delete AFTER DELETE ON keys
    BEGIN UPDATE meta SET v = CAST(v AS INTEGER) + 1 WHERE k = 'state_seq'; END;
    CREATE TRIGGER state_seq_versions_insert AFTER INSERT ON versions
    BEGIN UPDATE meta SET v = CAST(v AS INTEGER) + 1 WHERE k = 'state_seq'; END;
    CREATE TRIGGER state_seq_versions_update AFTER UPDATE ON versions
    BEGIN UPDATE meta SET v = CAST(v AS INTEGER) + 1 WHERE k = 'state_seq'; END;
    CREATE TRIGGER state_seq_versions_delete AFTER DELETE ON versions
    BEGIN UPDATE meta SET v = CAST(v AS INTEGER) + 1 WHERE k = 'state_seq'; END;
    CREATE TRIGGER state_seq_roles_insert AFTER INSERT ON role_definitions
    BEGIN UPDATE meta SET v = CAST(v AS INTEGER) + 1 WHERE k = 'state_seq'; END;
    CREATE TRIGGER state_seq_roles_update AFTER UPDATE ON role_definitions
    BEGIN UPDATE meta SET v = CAST(v AS INTEGER) + 1 WHERE k = 'state_seq'; END;
    CREATE TRIGGER state_seq_roles_delete AFTER DELETE ON role_definitions
    BEGIN UPDATE meta SET v = CAST(v AS INTEGER) + 1 WHERE k = 'state_seq'; END;
    CREATE TRIGGER state_seq_assignments_insert AFTER INSERT ON role_assignments
    BEGIN UPDATE meta SET v = CAST(v AS INTEGER) + 1 WHERE k = 'state_seq'; END;
    CREATE TRIGGER state_seq_assignments_update AFTER UPDATE ON role_assignments
    BEGIN UPDATE meta SET v = CAST(v AS INTEGER) + 1 WHERE k = 'state_seq'; END;
    CREATE TRIGGER state_seq_assignments_delete AFTER DELETE ON role_assignments
    BEGIN UPDATE meta SET v = CAST(v AS INTEGER) + 1 WHERE k = 'state_seq'; END;
    CREATE TABLE jobs (
        id            TEXT PRIMARY KEY,
        kind          TEXT NOT NULL,
        status        TEXT NOT NULL,
        details       TEXT NOT NULL,
        error_code    TEXT,
        error_message TEXT,
        start_time    INTEGER NOT NULL,
        end_time      INTEGER,
        container     TEXT NOT NULL,
        folder        TEXT,
        key_name      TEXT,
        done          INTEGER NOT NULL DEFAULT 0,
        total         INTEGER NOT NULL DEFAULT 0
    );
    "#,
    // 5: intents as typed JSON. Rows written before carry format 1 (an operation name and a
    // payload of its own per operation); `store::intents` reads both.
    r#"
    ALTER TABLE intents ADD COLUMN format INTEGER NOT NULL DEFAULT 1;
    "#,
    // 6: key rotation policies, one per key, as `model::RotationPolicy` JSON. A policy belongs to
    // its key: it stays through soft-delete and recovery and goes with the key row (a purge, a
    // full restore's swap). Full backups hold policies, so changing one moves `state_seq`.
    r#"
    CREATE TABLE rotation_policies (
        name    TEXT PRIMARY KEY COLLATE NOCASE REFERENCES keys(name) ON DELETE CASCADE,
        policy  TEXT NOT NULL,
        created INTEGER NOT NULL,
        updated INTEGER NOT NULL
    );
    CREATE TRIGGER state_seq_rotation_policies_insert AFTER INSERT ON rotation_policies
    BEGIN UPDATE meta SET v = CAST(v AS INTEGER) + 1 WHERE k = 'state_seq'; END;
    CREATE TRIGGER state_seq_rotation_policies_update AFTER UPDATE ON rotation_policies
    BEGIN UPDATE meta SET v = CAST(v AS INTEGER) + 1 WHERE k = 'state_seq'; END;
    CREATE TRIGGER state_seq_rotation_policies_delete AFTER DELETE ON rotation_policies
    BEGIN UPDATE meta SET v = CAST(v AS INTEGER) + 1 WHERE k = 'state_seq'; END;
    "#,
];

pub fn migrate(conn: &mut Connection) -> Result<()> {
    let applied: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let applied =
        usize::try_from(applied).map_err(|_| Error::Corrupt("negative schema version".into()))?;
    if applied > MIGRATIONS.len() {
        return Err(Error::Corrupt(format!(
            "the database has schema version {applied}, newer than this binary knows ({}); upgrade p11vault",
            MIGRATIONS.len()
        )));
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (index + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}
