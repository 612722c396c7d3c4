//! The read store's three roles of deploy/postgres/roles.sql: migrations as
//! a step of their own by the schema's owner, the projector on a role that
//! may not change the schema, the read-service on one that may only
//! SELECT; and a schema migrated by a newer release (a rollback) does not
//! stop this one.

use std::process::Output;

use shared::proto::bank::v1::{self as pb, account_query_service_client::AccountQueryServiceClient};
use sqlx::{AnyConnection, AssertSqlSafe, Connection, Executor};

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_system_runs_on_the_three_roles_of_roles_sql_and_survives_a_rollback() {
    let store = Store::postgres().await;
    let admin_url = store.url();
    // Roles belong to the whole server: this run's own names.
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let roles_sql = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/postgres/roles.sql"))
        .unwrap()
        .replace("cqrs_migrator", &format!("cqrs_migrator_{suffix}"))
        .replace("cqrs_projector", &format!("cqrs_projector_{suffix}"))
        .replace("cqrs_reader", &format!("cqrs_reader_{suffix}"));
    let mut admin = AnyConnection::connect(&admin_url).await.unwrap();
    admin.execute(sqlx::raw_sql(AssertSqlSafe(roles_sql.clone()))).await.unwrap();
    admin.execute(sqlx::raw_sql(AssertSqlSafe(roles_sql))).await.expect("roles.sql runs again");
    let [migrator, projector, reader] =
        ["migrator", "projector", "reader"].map(|role| as_role(&admin_url, &format!("cqrs_{role}_{suffix}")));

    // Migrations, as their own step.
    let nats = testkit::NatsServer::start().await;
    success(projector_command(&nats.url(), &migrator).arg("migrate").output().await.unwrap());

    // A newer release migrated further, then was rolled back to this one.
    let mut newer = AnyConnection::connect(&migrator).await.unwrap();
    newer.execute("CREATE TABLE from_a_newer_release (id BIGINT PRIMARY KEY)").await.unwrap();
    newer
        .execute(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES (99990101000000, 'from a newer release', TRUE, '\\x00', 0)",
        )
        .await
        .unwrap();
    let rerun = projector_command(&nats.url(), &migrator).arg("migrate").output().await.unwrap();
    success(rerun);

    // The projector may not change the schema, and need not.
    let mut as_projector = AnyConnection::connect(&projector).await.unwrap();
    assert!(as_projector.execute("CREATE TABLE nope (id BIGINT)").await.is_err(), "the projector may create tables");
    assert!(as_projector.execute("DROP TABLE account_summary").await.is_err(), "the projector may drop tables");
    let no_migrate = [("READ_STORE_MIGRATE", "false")];
    let write = spawn_write_service(&nats.url()).await;
    let mut running = ProjectorProcess::spawn(&nats.url(), &projector, &no_migrate).await;
    let read = spawn_read_service(&reader, &[]).await;
    let mut commands = pb::account_command_service_client::AccountCommandServiceClient::new(channel(write.addr));
    let open = pb::OpenAccountRequest { account_id: "role-1".into(), owner: "Ada".into(), command_id: String::new() };
    commands.open_account(open).await.unwrap();
    let deposit = pb::DepositFundsRequest { account_id: "role-1".into(), amount: 30, ..Default::default() };
    let last = commands.deposit_funds(deposit).await.unwrap().into_inner();
    let mut queries = AccountQueryServiceClient::new(channel(read.addr));
    let get = pb::GetAccountRequest { account_id: "role-1".into(), min_position: last.position };
    assert_eq!(queries.get_account(get.clone()).await.unwrap().into_inner().balance, 30);

    // A rebuild is row work too.
    running.kill().await;
    let mut rebuild = projector_command(&nats.url(), &projector);
    success(rebuild.arg("rebuild").envs(no_migrate).output().await.unwrap());
    assert_eq!(queries.get_account(get).await.unwrap().into_inner().balance, 30);

    drop((read, write, as_projector, newer));
    for role in ["migrator", "projector", "reader"] {
        let role = format!("cqrs_{role}_{suffix}");
        let _ = admin.execute(AssertSqlSafe(format!("REASSIGN OWNED BY {role} TO postgres"))).await;
        let _ = admin.execute(AssertSqlSafe(format!("DROP OWNED BY {role}"))).await;
        let _ = admin.execute(AssertSqlSafe(format!("DROP ROLE {role}"))).await;
    }
}

/// `url` (the test's superuser) as `role`, which trust authentication lets in.
fn as_role(url: &str, role: &str) -> String {
    let (_, database) = url.rsplit_once('/').unwrap();
    let (server, _) = url.trim_start_matches("postgres://").split_once('/').unwrap();
    let host = server.rsplit_once('@').map_or(server, |(_, host)| host);
    format!("postgres://{role}@{host}/{database}")
}

fn success(output: Output) {
    assert!(output.status.success(), "projector failed: {}", String::from_utf8_lossy(&output.stderr));
}
