//! The Ed25519 key this instance signs access tokens with, and its registration in the
//! `signing_keys` table, where verifiers (task-service, GetJwks) find the public half.
//!
//! Production: `SIGNING_KEY_FILE` names a PKCS#8 PEM file (`openssl genpkey -algorithm ed25519`)
//! readable by its owner only. Development: with no file, a fresh random key is made at each
//! start (never a built-in one, so nothing secret ships in the code); it is registered like any
//! other and retired once its last token has expired after a graceful stop.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use jsonwebtoken::EncodingKey;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::time::Duration;
use todo_shared::database::Db;

pub struct TokenSigningKey {
    pub kid: String,
    pub encoding_key: EncodingKey,
    pub public_key: [u8; 32],
    /// Made at start rather than read from a file.
    pub ephemeral: bool,
}

impl TokenSigningKey {
    /// Reads a PKCS#8 PEM Ed25519 private key, refusing a file others can read.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)?.permissions().mode();
        if mode & 0o077 != 0 {
            anyhow::bail!(
                "SIGNING_KEY_FILE: {} is readable by group or others (mode {:o}); run chmod 600 on it",
                path.display(),
                mode & 0o777
            );
        }
        let pem = std::fs::read_to_string(path)?;
        let key = SigningKey::from_pkcs8_pem(&pem).map_err(|_| {
            anyhow::anyhow!("SIGNING_KEY_FILE: {} is not a PKCS#8 PEM Ed25519 private key", path.display())
        })?;
        Self::from_signing_key(&key, false)
    }

    /// A fresh random key, for development.
    pub fn generate() -> anyhow::Result<Self> {
        use rand::RngCore;
        let mut secret = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut secret);
        Self::from_signing_key(&SigningKey::from_bytes(&secret), true)
    }

    fn from_signing_key(key: &SigningKey, ephemeral: bool) -> anyhow::Result<Self> {
        let der = key.to_pkcs8_der().map_err(|_| anyhow::anyhow!("cannot encode the signing key"))?;
        let public_key = key.verifying_key().to_bytes();
        Ok(Self {
            kid: thumbprint(&public_key),
            encoding_key: EncodingKey::from_ed_der(der.as_bytes()),
            public_key,
            ephemeral,
        })
    }

    /// Makes the public key verify from now on. A key that was retired stays retired: an
    /// instance restarted with a retired (perhaps leaked) key refuses to start rather than
    /// quietly make it valid again.
    pub async fn register(&self, pool: &Db) -> anyhow::Result<()> {
        sqlx::query("INSERT INTO signing_keys (kid, public_key) VALUES ($1, $2) ON CONFLICT (kid) DO NOTHING")
            .bind(&self.kid)
            .bind(&self.public_key[..])
            .execute(pool)
            .await?;
        let retired: Option<chrono::DateTime<chrono::Utc>> =
            sqlx::query_scalar("SELECT retired_at FROM signing_keys WHERE kid = $1")
                .bind(&self.kid)
                .fetch_one(pool)
                .await?;
        if let Some(at) = retired {
            anyhow::bail!(
                "SIGNING_KEY_FILE: key {} was retired (it stops or stopped verifying at {at}); give a new key file",
                self.kid
            );
        }
        Ok(())
    }

    /// Stops the key verifying once `after` has passed: when its last token has expired.
    pub async fn retire_after(&self, pool: &Db, after: Duration) -> Result<(), sqlx::Error> {
        retire(pool, &self.kid, after).await.map(|_| ())
    }
}

/// Stops the key `kid` verifying once `after` has passed; false if no such key exists.
/// Verifiers hear of it at once (a trigger notifies them) and GetJwks stops listing it then.
pub async fn retire(pool: &Db, kid: &str, after: Duration) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("UPDATE signing_keys SET retired_at = now() + make_interval(secs => $2) WHERE kid = $1")
        .bind(kid)
        .bind(after.as_secs_f64())
        .execute(pool)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// `auth-service retire-key <kid> [seconds]`: the last step of a key rotation, run once no
/// instance signs with the old key any more. Give `seconds` to let its last tokens expire first.
/// Exit code 0 when done, 1 when there is no such key or the database fails, 2 on a bad setting.
pub async fn retire_key_command(kid: &str, after: u64) -> std::process::ExitCode {
    use std::process::ExitCode;
    let config = match todo_shared::database::DbConfig::from_env(&todo_shared::env::ProcessEnv) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("auth-service: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    let outcome = async {
        let pool = todo_shared::database::pool(&config)?;
        retire(&pool, kid, Duration::from_secs(after)).await
    };
    match outcome.await {
        Ok(true) => {
            println!("key {kid} stops verifying in {after} s");
            ExitCode::SUCCESS
        }
        Ok(false) => {
            eprintln!("auth-service retire-key: no key with kid {kid}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("auth-service retire-key: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The RFC 7638 JWK thumbprint of an Ed25519 public key: stable, and the same on every instance
/// that holds the same key.
pub fn thumbprint(public_key: &[u8; 32]) -> String {
    let jwk = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#, URL_SAFE_NO_PAD.encode(public_key));
    URL_SAFE_NO_PAD.encode(Sha256::digest(jwk.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbprint_matches_rfc8037_example() {
        // RFC 8037, appendix A.3.
        let x = URL_SAFE_NO_PAD.decode("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo").unwrap();
        let key: [u8; 32] = x.try_into().unwrap();
        assert_eq!(thumbprint(&key), "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
    }

    #[test]
    fn refuses_a_key_file_others_can_read() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("todo-key-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("key.pem");
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let pem = key.to_pkcs8_pem(Default::default()).unwrap();
        std::fs::write(&path, pem.as_bytes()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(TokenSigningKey::from_file(&path).err().unwrap().to_string().contains("chmod 600"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let loaded = TokenSigningKey::from_file(&path).unwrap();
        assert_eq!(loaded.public_key, key.verifying_key().to_bytes());
        assert!(!loaded.ephemeral);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
