//! Which database a deployment uses, from its command line: SQLite files under the data
//! directory, or schemas of one PostgreSQL database.

use std::path::Path;

use crate::{Db, Error, Result};

/// `sqlite` (one file per service under the data directory) or
/// `postgres://user@host:port/db[?schema_prefix=p_]` (one schema per service, `<prefix><name>`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum DbUrl {
    #[default]
    Sqlite,
    Postgres {
        url: String,
        schema_prefix: String,
    },
}

impl std::str::FromStr for DbUrl {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if s == "sqlite" {
            return Ok(DbUrl::Sqlite);
        }
        if !(s.starts_with("postgres://") || s.starts_with("postgresql://")) {
            return Err(format!("`{s}`: expected sqlite or postgres://…"));
        }
        let (url, prefix) = match s.split_once("schema_prefix=") {
            Some((before, p)) => {
                let p = p.split('&').next().unwrap_or("");
                let url = before.trim_end_matches(['?', '&']).to_owned();
                (url, p.to_owned())
            }
            None => (s.to_owned(), "shopflow_".to_owned()),
        };
        Ok(DbUrl::Postgres {
            url,
            schema_prefix: prefix,
        })
    }
}

impl DbUrl {
    /// Opens (creating if needed) the database named `name` (a service, or `ops`): the SQLite
    /// file `<data-dir>/<name>/<name>.db`, or the schema `<prefix><name>`.
    pub async fn open(&self, data_dir: &Path, name: &str) -> Result<Db> {
        let located = |e: Error| Error::Unavailable {
            reason: format!("the {name} database: {e}"),
        };
        match self {
            DbUrl::Sqlite => {
                Db::open_sqlite(data_dir.join(name).join(format!("{name}.db"))).map_err(located)
            }
            DbUrl::Postgres { url, schema_prefix } => {
                Db::connect_postgres(url, &format!("{schema_prefix}{name}"))
                    .await
                    .map_err(located)
            }
        }
    }

    /// Like [`DbUrl::open`] for a deployment that must exist already: a missing SQLite file is
    /// an error instead of a new, empty database.
    pub async fn open_existing(&self, data_dir: &Path, name: &str) -> Result<Db> {
        if *self == DbUrl::Sqlite {
            let path = data_dir.join(name).join(format!("{name}.db"));
            if !path.exists() {
                return Err(Error::Invalid {
                    what: "data directory",
                    reason: format!(
                        "{} does not exist: is {} a shopflow data directory?",
                        path.display(),
                        data_dir.display()
                    ),
                });
            }
        }
        self.open(data_dir, name).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!("sqlite".parse::<DbUrl>(), Ok(DbUrl::Sqlite));
        assert_eq!(
            "postgres://u@h:5432/db?schema_prefix=t_".parse::<DbUrl>(),
            Ok(DbUrl::Postgres {
                url: "postgres://u@h:5432/db".into(),
                schema_prefix: "t_".into()
            })
        );
        assert_eq!(
            "postgresql://u@h/db".parse::<DbUrl>(),
            Ok(DbUrl::Postgres {
                url: "postgresql://u@h/db".into(),
                schema_prefix: "shopflow_".into()
            })
        );
        assert!("mysql://x".parse::<DbUrl>().is_err());
    }
}
