//! The registries that departments keep in databases, loaded from the
//! population into a real PostgreSQL or MariaDB: the housing bureau's
//! property rights, the traffic police's motor vehicles and the agricultural
//! bureau's land contracts, each a table behind a read-only view, with a
//! reader account that may select from the views and nothing else.
//!
//! Every load gets its own schema (PostgreSQL) or database (MariaDB) and
//! reader, named after the load, and [`Loaded::drop_all`] (or dropping the
//! [`Loaded`]) removes them. The broker's configuration for each source is
//! in `mock-agencies/config/sql/` ([`Loaded::sources_toml`]).

use std::{fmt, str::FromStr};

use chrono::NaiveDate;
use hedui_proto::{
    v1::{CivilDate, fact::Value},
    yuan,
};
use sqlx::{
    AssertSqlSafe, Connection, MySql, MySqlConnection, PgConnection, Postgres, QueryBuilder,
    mysql::MySqlConnectOptions, postgres::PgConnectOptions,
};

use crate::population::Population;

/// The sources the simulation can load into a database.
pub const SQL_SOURCES: [&str; 3] = ["housing-management", "traffic-police", "agriculture"];

/// The database server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    /// PostgreSQL: one schema per load.
    Postgres,
    /// MariaDB (or MySQL): one database per load.
    MariaDb,
}

/// Why a load failed.
#[derive(Debug, thiserror::Error)]
pub enum SqlLoadError {
    /// The administrator URL is not `scheme://user@host:port/database`.
    #[error(
        "admin url {0:?}: expected postgres://user@host:port/database or mysql://user@host:port/database"
    )]
    BadUrl(String),
    /// A source that is not kept in a database.
    #[error("source {0:?} is not one of the database registries ({sources})", sources = SQL_SOURCES.join(", "))]
    UnknownSource(String),
    /// The name of the load is not lower-case letters, digits and `_`.
    #[error("name {0:?}: use 1 to 40 lower-case letters, digits and '_'")]
    BadName(String),
    /// The database refused.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

/// What was loaded, and where.
pub struct Loaded {
    server: Server,
    admin_url: String,
    name: String,
    reader: String,
    reader_url: String,
    sources: Vec<String>,
    dropped: bool,
}

impl fmt::Debug for Loaded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Loaded")
            .field("server", &self.server)
            .field("name", &self.name)
            .field("sources", &self.sources)
            .finish()
    }
}

/// `url` with its user (and, when given, its database) replaced.
fn with_user(url: &str, user: &str, database: Option<&str>) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let (authority, path) = match rest.split_once('/') {
        Some((a, p)) => (a, p),
        None => (rest, ""),
    };
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let db = database.unwrap_or(path.split('?').next().unwrap_or_default());
    if host.is_empty() || db.is_empty() {
        return None;
    }
    Some(format!("{scheme}://{user}@{host}/{db}"))
}

/// One cell of a row to insert.
#[derive(Debug, Clone)]
enum Cell {
    Text(String),
    Int(i64),
    Date(Option<NaiveDate>),
    /// A decimal written as text, and its SQL type.
    Decimal(String, &'static str),
}

fn date(d: Option<&CivilDate>) -> Option<NaiveDate> {
    d.and_then(|d| NaiveDate::from_ymd_opt(d.year, d.month as u32, d.day as u32))
}

/// The statements that create a source's table and view, with `p` the
/// schema or database prefix (e.g. `hedui_t1.`).
fn ddl(source: &str, p: &str) -> (Vec<String>, &'static str, &'static str, Vec<&'static str>) {
    let (table, view, columns, create) = match source {
        "housing-management" => (
            "property_rights",
            "v_dwelling_by_owner",
            vec![
                "record_no",
                "owner_id_no",
                "cert_no",
                "building_use",
                "floor_area_m2",
                "acquired_on",
                "share_bp",
                "monthly_rent_yuan",
            ],
            "record_no VARCHAR(32) PRIMARY KEY, owner_id_no CHAR(18) NOT NULL, \
             cert_no VARCHAR(64) NOT NULL, building_use CHAR(1) NOT NULL, \
             floor_area_m2 DECIMAL(12,2) NOT NULL, acquired_on DATE NULL, \
             share_bp INT NOT NULL, monthly_rent_yuan DECIMAL(12,2) NOT NULL",
        ),
        "traffic-police" => (
            "motor_vehicles",
            "v_vehicle_by_owner",
            vec![
                "record_no",
                "owner_id_no",
                "plate_no",
                "vehicle_type",
                "register_date",
                "purchase_price",
                "status_code",
            ],
            "record_no VARCHAR(32) PRIMARY KEY, owner_id_no CHAR(18) NOT NULL, \
             plate_no VARCHAR(16) NOT NULL, vehicle_type CHAR(1) NOT NULL, \
             register_date DATE NULL, purchase_price DECIMAL(12,2) NOT NULL, \
             status_code CHAR(1) NOT NULL",
        ),
        _ => (
            "land_contracts",
            "v_land_contract_by_contractor",
            vec![
                "record_no",
                "contractor_id_no",
                "contract_no",
                "area_mu",
                "subsidies_yuan",
                "large_machinery",
            ],
            "record_no VARCHAR(32) PRIMARY KEY, contractor_id_no CHAR(18) NOT NULL, \
             contract_no VARCHAR(32) NOT NULL, area_mu DECIMAL(14,6) NOT NULL, \
             subsidies_yuan DECIMAL(12,2) NOT NULL, large_machinery CHAR(1) NOT NULL",
        ),
    };
    let owner = columns[1];
    let statements = vec![
        format!("CREATE TABLE {p}{table} ({create})"),
        format!("CREATE INDEX {table}_by_owner ON {p}{table} ({owner})"),
        format!(
            "CREATE VIEW {p}{view} AS SELECT {} FROM {p}{table}",
            columns.join(", ")
        ),
    ];
    (statements, table, view, columns)
}

/// The rows of a source's table: every fact it holds about every person.
fn rows(population: &Population, source: &str) -> Vec<Vec<Cell>> {
    let as_of = prost_types::Timestamp::default();
    let mut out = Vec::new();
    for h in population.households() {
        for p in h.members() {
            for f in population.facts_for(source, p.id(), as_of) {
                let id = Cell::Text(p.id().to_owned());
                let rec = Cell::Text(f.record_id.clone());
                let row = match f.value {
                    Some(Value::Dwelling(d)) => vec![
                        rec,
                        id,
                        Cell::Text(d.certificate_number),
                        Cell::Text(
                            match d.r#use {
                                1 => "R",
                                2 => "N",
                                _ => "U",
                            }
                            .into(),
                        ),
                        Cell::Decimal(yuan(d.area_centi_m2), "DECIMAL(12,2)"),
                        Cell::Date(date(d.acquired_date.as_ref())),
                        Cell::Int(d.share_bp.into()),
                        Cell::Decimal(yuan(d.monthly_rent_fen), "DECIMAL(12,2)"),
                    ],
                    Some(Value::Vehicle(v)) => vec![
                        rec,
                        id,
                        Cell::Text(v.plate),
                        Cell::Text(
                            ["X", "K", "H", "M", "N", "T", "D", "S"]
                                .get(v.vehicle_class as usize)
                                .unwrap_or(&"X")
                                .to_string(),
                        ),
                        Cell::Date(date(v.registration_date.as_ref())),
                        Cell::Decimal(yuan(v.purchase_price_fen), "DECIMAL(12,2)"),
                        Cell::Text(
                            ["X", "A", "E"]
                                .get(v.status as usize)
                                .unwrap_or(&"X")
                                .to_string(),
                        ),
                    ],
                    Some(Value::LandContract(l)) => vec![
                        rec,
                        id,
                        Cell::Text(l.contract_number),
                        // 1 mu = 10000/15 m2, so mu to six decimals is
                        // exactly area_centi_m2 * 15 millionths.
                        Cell::Decimal(
                            format!(
                                "{}.{:06}",
                                l.area_centi_m2 * 15 / 1_000_000,
                                l.area_centi_m2 * 15 % 1_000_000
                            ),
                            "DECIMAL(14,6)",
                        ),
                        Cell::Decimal(yuan(l.subsidies_12m_fen), "DECIMAL(12,2)"),
                        Cell::Text(if l.large_machinery { "Y" } else { "N" }.into()),
                    ],
                    _ => continue,
                };
                out.push(row);
            }
        }
    }
    out
}

macro_rules! insert_rows {
    ($conn:expr, $db:ty, $prefix:expr, $rows:expr) => {{
        for chunk in $rows.chunks(200) {
            let mut b = QueryBuilder::<$db>::new($prefix.clone());
            b.push_values(chunk, |mut sep, row| {
                for cell in row {
                    match cell {
                        Cell::Text(t) => {
                            sep.push_bind(t.clone());
                        }
                        Cell::Int(i) => {
                            sep.push_bind(*i);
                        }
                        Cell::Date(d) => {
                            sep.push_bind(*d);
                        }
                        Cell::Decimal(v, ty) => {
                            sep.push("CAST(");
                            sep.push_bind_unseparated(v.clone());
                            sep.push_unseparated(format!(" AS {ty})"));
                        }
                    }
                }
            });
            b.build().execute(&mut *$conn).await?;
        }
    }};
}

async fn exec_pg(c: &mut PgConnection, sql: String) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(AssertSqlSafe(sql)).execute(c).await.map(drop)
}

async fn exec_my(c: &mut MySqlConnection, sql: String) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(AssertSqlSafe(sql)).execute(c).await.map(drop)
}

/// Loads what `sources` hold about `population` into a new schema
/// (PostgreSQL) or database (MariaDB) named `hedui_<name>`, behind views
/// that a new reader account may select from. `admin_url` is an account
/// that may create schemas, databases and roles, e.g.
/// `postgres://postgres@127.0.0.1:5432/test` or
/// `mysql://root@127.0.0.1:3306/test`.
///
/// # Errors
/// [`SqlLoadError`]; what was created before the error is removed.
pub async fn load(
    population: &Population,
    server: Server,
    admin_url: &str,
    name: &str,
    sources: &[&str],
) -> Result<Loaded, SqlLoadError> {
    if name.is_empty()
        || name.len() > 40
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(SqlLoadError::BadName(name.to_owned()));
    }
    for s in sources {
        if !SQL_SOURCES.contains(s) {
            return Err(SqlLoadError::UnknownSource((*s).to_owned()));
        }
    }
    let schema = format!("hedui_{name}");
    let reader = format!("hedui_r_{name}");
    let reader_url = match server {
        Server::Postgres => with_user(admin_url, &reader, None),
        Server::MariaDb => with_user(admin_url, &reader, Some(&schema)),
    }
    .ok_or_else(|| SqlLoadError::BadUrl(admin_url.to_owned()))?;
    let mut loaded = Loaded {
        server,
        admin_url: admin_url.to_owned(),
        name: schema.clone(),
        reader: reader.clone(),
        reader_url,
        sources: sources.iter().map(|s| (*s).to_owned()).collect(),
        dropped: true,
    };
    let result = loaded.create(population).await;
    loaded.dropped = false;
    if let Err(e) = result {
        let _ = loaded.remove().await;
        loaded.dropped = true;
        return Err(e);
    }
    Ok(loaded)
}

impl Loaded {
    async fn create(&self, population: &Population) -> Result<(), SqlLoadError> {
        let (s, r) = (&self.name, &self.reader);
        let prefix = format!("{s}.");
        match self.server {
            Server::Postgres => {
                let opts = PgConnectOptions::from_str(&self.admin_url)?;
                let mut c = PgConnection::connect_with(&opts).await?;
                exec_pg(&mut c, format!("CREATE SCHEMA {s}")).await?;
                exec_pg(&mut c, format!("CREATE ROLE {r} LOGIN")).await?;
                exec_pg(&mut c, format!("GRANT USAGE ON SCHEMA {s} TO {r}")).await?;
                for source in &self.sources {
                    let (stmts, table, view, columns) = ddl(source, &prefix);
                    for st in stmts {
                        exec_pg(&mut c, st).await?;
                    }
                    let insert = format!("INSERT INTO {prefix}{table} ({}) ", columns.join(", "));
                    insert_rows!(&mut c, Postgres, insert, rows(population, source));
                    exec_pg(&mut c, format!("GRANT SELECT ON {prefix}{view} TO {r}")).await?;
                }
                c.close().await?;
            }
            Server::MariaDb => {
                let opts = MySqlConnectOptions::from_str(&self.admin_url.replacen(
                    "mariadb://",
                    "mysql://",
                    1,
                ))?;
                let mut c = MySqlConnection::connect_with(&opts).await?;
                exec_my(&mut c, format!("CREATE DATABASE {s} CHARACTER SET utf8mb4")).await?;
                exec_my(&mut c, format!("CREATE USER '{r}'@'%'")).await?;
                for source in &self.sources {
                    let (stmts, table, view, columns) = ddl(source, &prefix);
                    for st in stmts {
                        exec_my(&mut c, st).await?;
                    }
                    let insert = format!("INSERT INTO {prefix}{table} ({}) ", columns.join(", "));
                    insert_rows!(&mut c, MySql, insert, rows(population, source));
                    exec_my(
                        &mut c,
                        format!("GRANT SELECT ON {prefix}{view} TO '{r}'@'%'"),
                    )
                    .await?;
                }
                c.close().await?;
            }
        }
        Ok(())
    }

    async fn remove(&self) -> Result<(), SqlLoadError> {
        let (s, r) = (&self.name, &self.reader);
        match self.server {
            Server::Postgres => {
                let opts = PgConnectOptions::from_str(&self.admin_url)?;
                let mut c = PgConnection::connect_with(&opts).await?;
                exec_pg(&mut c, format!("DROP SCHEMA IF EXISTS {s} CASCADE")).await?;
                exec_pg(&mut c, format!("DROP ROLE IF EXISTS {r}")).await?;
                c.close().await?;
            }
            Server::MariaDb => {
                let opts = MySqlConnectOptions::from_str(&self.admin_url.replacen(
                    "mariadb://",
                    "mysql://",
                    1,
                ))?;
                let mut c = MySqlConnection::connect_with(&opts).await?;
                exec_my(&mut c, format!("DROP DATABASE IF EXISTS {s}")).await?;
                exec_my(&mut c, format!("DROP USER IF EXISTS '{r}'@'%'")).await?;
                c.close().await?;
            }
        }
        Ok(())
    }

    /// Removes the schema or database and the reader.
    ///
    /// # Errors
    /// [`SqlLoadError::Database`] when the server refuses.
    pub async fn drop_all(mut self) -> Result<(), SqlLoadError> {
        self.dropped = true;
        self.remove().await
    }

    /// Leaves what was loaded in place (a load for a test system that
    /// outlives this process); [`remove`] removes it later.
    pub fn keep(mut self) {
        self.dropped = true;
    }

    /// The schema (PostgreSQL) or database (MariaDB) loaded.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The reader's URL: it may select from the views and nothing else.
    pub fn reader_url(&self) -> &str {
        &self.reader_url
    }

    /// The broker's `[[sources]]` entries for the sources loaded, reading
    /// as the reader.
    pub fn sources_toml(&self) -> String {
        let (prefix, param) = match self.server {
            Server::Postgres => (format!("{}.", self.name), "$1"),
            Server::MariaDb => (String::new(), "?"),
        };
        let mut out = String::new();
        for s in &self.sources {
            let template = match s.as_str() {
                "housing-management" => include_str!("../config/sql/housing-management.toml"),
                "traffic-police" => include_str!("../config/sql/traffic-police.toml"),
                _ => include_str!("../config/sql/agriculture.toml"),
            };
            out.push_str(
                &template
                    .replace("{url}", &self.reader_url)
                    .replace("{prefix}", &prefix)
                    .replace("{param}", param),
            );
            out.push('\n');
        }
        out
    }
}

/// Removes the load named `name` (as given to [`load`]) and its reader.
///
/// # Errors
/// [`SqlLoadError`] when the name is wrong or the server refuses.
pub async fn remove(server: Server, admin_url: &str, name: &str) -> Result<(), SqlLoadError> {
    if name.is_empty()
        || name.len() > 40
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(SqlLoadError::BadName(name.to_owned()));
    }
    let loaded = Loaded {
        server,
        admin_url: admin_url.to_owned(),
        name: format!("hedui_{name}"),
        reader: format!("hedui_r_{name}"),
        reader_url: String::new(),
        sources: Vec::new(),
        dropped: true,
    };
    loaded.remove().await
}

impl Drop for Loaded {
    /// Removes what was loaded if [`Loaded::drop_all`] was not called (a
    /// test that panicked): on its own thread and runtime, since drop
    /// cannot wait.
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        let me = Loaded {
            server: self.server,
            admin_url: self.admin_url.clone(),
            name: self.name.clone(),
            reader: self.reader.clone(),
            reader_url: self.reader_url.clone(),
            sources: Vec::new(),
            dropped: true,
        };
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(rt) = rt
                && let Err(e) = rt.block_on(me.remove())
            {
                eprintln!("could not remove {}: {e}", me.name);
            }
        });
        let _ = done.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_urls_keep_host_and_database() {
        assert_eq!(
            with_user("postgres://postgres@127.0.0.1:5432/test", "r", None).as_deref(),
            Some("postgres://r@127.0.0.1:5432/test")
        );
        assert_eq!(
            with_user("mysql://root:pw@127.0.0.1:3306/test", "r", Some("hedui_x")).as_deref(),
            Some("mysql://r@127.0.0.1:3306/hedui_x")
        );
        assert_eq!(with_user("mysql://127.0.0.1", "r", None), None);
    }
}
