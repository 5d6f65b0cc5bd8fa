//! Tenants and API keys. A key belongs to one tenant and has one role; only
//! the SHA-256 of a key is stored (keys are 192 random bits, so a plain hash
//! is enough), and the key itself is shown once, when created.

use rand::RngCore;
use sha2::{Digest, Sha256};
use tally_projections::db::{Db, DbError};
use tally_projections::time;

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
    let id = crate::ids::new_id("key");
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

/// The key with this secret, if any.
pub async fn authenticate(db: &Db, secret: &str) -> Result<Option<ApiKey>, DbError> {
    let row: Option<(String, String, String)> =
        sqlx::query_as("SELECT id, tenant, role FROM api_keys WHERE key_hash = $1")
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
