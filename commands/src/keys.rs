//! Tenants and API keys. A key belongs to one tenant and has one role; only
//! the SHA-256 of a key is stored (keys are 192 random bits, so a plain hash
//! is enough), and the key itself is shown once, when created. A revoked key
//! keeps its row, marked `revoked_at`, and no longer authenticates; each
//! revocation is also a `KeyRevoked` event on the key's stream, so the log
//! says who revoked it.

use rand::RngCore;
use sha2::{Digest, Sha256};
use tally_aggregates::{AccessKey, AccessKeyCommand};
use tally_projections::db::{Db, DbError};
use tally_projections::time;

use crate::dispatch::{CommandError, CommandMeta, Dispatcher};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Admin,
    Writer,
    Reader,
    Auditor,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "writer" => Some(Role::Writer),
            "reader" => Some(Role::Reader),
            "auditor" => Some(Role::Auditor),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Writer => "writer",
            Role::Reader => "reader",
            Role::Auditor => "auditor",
        }
    }
}

/// An authenticated key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub id: String,
    pub tenant: String,
    pub role: Role,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("tenant names are 1-64 characters of a-z, 0-9, '-' and '_'")]
    BadTenant,
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<sqlx::Error> for KeyError {
    fn from(e: sqlx::Error) -> Self {
        KeyError::Db(DbError::Sqlx(e))
    }
}

pub fn valid_tenant(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Creates a key (and the tenant when new); returns the key's id and the secret.
pub async fn create(db: &Db, tenant: &str, role: Role) -> Result<(String, String), KeyError> {
    if !valid_tenant(tenant) {
        return Err(KeyError::BadTenant);
    }
    let mut bytes = [0u8; 24];
    rand::thread_rng().fill_bytes(&mut bytes);
    let secret = format!("tally_{}", hex::encode(bytes));
    let id = <crate::ids::KeyId as crate::ids::Generate>::generate().into_string();
    let now = time::to_text(chrono::Utc::now());
    let mut tx = db.any.begin().await?;
    sqlx::query("INSERT INTO tenants (id, created_at) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING")
        .bind(tenant)
        .bind(&now)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO api_keys (id, tenant, role, key_hash, created_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&id)
    .bind(tenant)
    .bind(role.as_str())
    .bind(hash(&secret))
    .bind(&now)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok((id, secret))
}

/// The key with this secret, if any and not revoked.
pub async fn authenticate(db: &Db, secret: &str) -> Result<Option<ApiKey>, DbError> {
    let row: Option<(String, String, String)> = sqlx::query_as(
        "SELECT id, tenant, role FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
    )
    .bind(hash(secret))
    .fetch_optional(&db.any)
    .await?;
    Ok(row
        .and_then(|(id, tenant, role)| Role::parse(&role).map(|role| ApiKey { id, tenant, role })))
}

pub async fn count(db: &Db) -> Result<i64, DbError> {
    Ok(sqlx::query_scalar("SELECT COUNT(*) FROM api_keys")
        .fetch_one(&db.any)
        .await?)
}

/// Keys listed per page.
pub const MAX_KEYS_PAGE: i64 = 200;

/// A key as it may be shown: never its secret (nor its hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    pub id: String,
    pub tenant: String,
    pub role: String,
    pub created_at: String,
    pub revoked_at: Option<String>,
}

type KeyRow = (String, String, String, String, Option<String>);

fn key_info((id, tenant, role, created_at, revoked_at): KeyRow) -> KeyInfo {
    KeyInfo {
        id,
        tenant,
        role,
        created_at,
        revoked_at,
    }
}

/// One page of keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeysPage {
    pub data: Vec<KeyInfo>,
    /// The id to continue after, when more follow.
    pub next_cursor: Option<String>,
}

/// Keys by id (ids grow with time), after `after`, at most `limit` (1 to
/// [`MAX_KEYS_PAGE`]); of one tenant, or of every tenant for the CLI.
pub async fn list(
    db: &Db,
    tenant: Option<&str>,
    after: Option<&str>,
    limit: i64,
) -> Result<KeysPage, DbError> {
    let limit = limit.clamp(1, MAX_KEYS_PAGE);
    let rows: Vec<KeyRow> = sqlx::query_as(
        "SELECT id, tenant, role, created_at, revoked_at FROM api_keys \
         WHERE ($1 = '' OR tenant = $1) AND id > $2 ORDER BY id LIMIT $3",
    )
    .bind(tenant.unwrap_or(""))
    .bind(after.unwrap_or(""))
    // One more than asked says whether another page follows.
    .bind(limit + 1)
    .fetch_all(&db.any)
    .await?;
    let mut data: Vec<KeyInfo> = rows.into_iter().map(key_info).collect();
    let more = data.len() as i64 > limit;
    data.truncate(limit as usize);
    let next_cursor = if more {
        data.last().map(|k| k.id.clone())
    } else {
        None
    };
    Ok(KeysPage { data, next_cursor })
}

async fn find(db: &Db, tenant: Option<&str>, id: &str) -> Result<Option<KeyInfo>, DbError> {
    let row: Option<KeyRow> = sqlx::query_as(
        "SELECT id, tenant, role, created_at, revoked_at FROM api_keys \
         WHERE id = $1 AND ($2 = '' OR tenant = $2)",
    )
    .bind(id)
    .bind(tenant.unwrap_or(""))
    .fetch_optional(&db.any)
    .await?;
    Ok(row.map(key_info))
}

/// How many keys were ever revoked. It only grows, so a process whose
/// count changed knows that some key it may have cached was revoked.
pub async fn revocations(db: &Db) -> Result<i64, DbError> {
    Ok(
        sqlx::query_scalar("SELECT COUNT(*) FROM api_keys WHERE revoked_at IS NOT NULL")
            .fetch_one(&db.any)
            .await?,
    )
}

/// Revokes key `id` (of `tenant` only, when given): marks its row first, so
/// it stops authenticating before anything else can fail, then records
/// `KeyRevoked` on its stream with `meta`'s actor. Idempotent: revoking a
/// revoked key keeps the first time and records the event if it is missing.
/// `None` when there is no such key. `meta.tenant` is replaced by the key's.
pub async fn revoke(
    d: &Dispatcher,
    meta: &CommandMeta,
    tenant: Option<&str>,
    id: &str,
) -> Result<Option<KeyInfo>, CommandError> {
    let db = d.db();
    let now = d.clock().now();
    let Some(key) = find(db, tenant, id).await? else {
        return Ok(None);
    };
    sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
        .bind(time::to_text(now))
        .bind(id)
        .execute(&db.any)
        .await
        .map_err(DbError::Sqlx)?;
    let key = find(db, tenant, id).await?.unwrap_or(key);
    let at = key
        .revoked_at
        .as_deref()
        .and_then(time::from_text)
        .unwrap_or(now);
    let meta = CommandMeta {
        tenant: key.tenant.clone(),
        ..meta.clone()
    };
    d.execute::<AccessKey, _>(&meta, &key.id, None, |k| {
        k.decide(AccessKeyCommand::Revoke {
            key_id: key.id.clone(),
            role: key.role.clone(),
            at,
        })
    })
    .await?;
    Ok(Some(key))
}
