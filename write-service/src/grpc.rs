//! The gRPC face of the write side: turns `bank.v1` requests into validated
//! domain commands (validation happens here, once), runs them, and turns
//! outcomes into replies or statuses. The only module that knows the
//! protobuf request types.

use std::sync::Arc;

use opentelemetry::{KeyValue, trace::FutureExt, trace::TraceContextExt};
use shared::proto::bank::v1::{
    self as pb,
    account_command_service_server::{AccountCommandService, AccountCommandServiceServer},
};
use tonic::{Request, Response, Status};

use crate::{
    app::Accounts,
    domain::{AccountId, Amount, Command, CommandId, Owner, ValidationError},
    error::CommandError,
    telemetry::{CommandTelemetry, CommandType},
};

/// `bank.v1.AccountCommandService` over [`Accounts`].
pub struct CommandService {
    accounts: Arc<Accounts>,
    telemetry: CommandTelemetry,
}

/// A request, validated: what the domain needs to execute it.
struct Parsed {
    account_id: AccountId,
    command: Command,
    command_id: Option<CommandId>,
}

impl CommandService {
    /// The tonic service for `accounts`.
    pub fn server(accounts: Arc<Accounts>) -> AccountCommandServiceServer<Self> {
        AccountCommandServiceServer::new(Self { accounts, telemetry: CommandTelemetry::default() })
    }

    async fn handle(
        &self,
        command_type: CommandType,
        parse: impl FnOnce() -> Result<Parsed, ValidationError>,
    ) -> Result<Response<pb::CommandReply>, Status> {
        let call = self.telemetry.start(command_type);
        let cx = call.cx.clone();
        let outcome = async {
            let parsed = parse()?;
            cx.span().set_attribute(KeyValue::new("cqrs.aggregate.id", parsed.account_id.to_string()));
            let accepted =
                self.accounts.execute(&parsed.account_id, &parsed.command, parsed.command_id.as_ref()).await?;
            Ok::<_, CommandError>((parsed.account_id, accepted))
        }
        .with_context(cx.clone())
        .await;
        call.finish(outcome.as_ref().map(|(_, accepted)| accepted));
        let (account_id, accepted) = outcome?;
        Ok(Response::new(pb::CommandReply {
            account_id: account_id.to_string(),
            version: accepted.version,
            position: accepted.position,
        }))
    }
}

#[tonic::async_trait]
impl AccountCommandService for CommandService {
    async fn open_account(
        &self,
        request: Request<pb::OpenAccountRequest>,
    ) -> Result<Response<pb::CommandReply>, Status> {
        let request = request.into_inner();
        self.handle(CommandType::OpenAccount, || {
            Ok(Parsed {
                account_id: AccountId::parse(request.account_id)?,
                command: Command::Open { owner: Owner::parse(request.owner)? },
                command_id: CommandId::parse_optional(request.command_id)?,
            })
        })
        .await
    }

    async fn deposit_funds(
        &self,
        request: Request<pb::DepositFundsRequest>,
    ) -> Result<Response<pb::CommandReply>, Status> {
        let request = request.into_inner();
        self.handle(CommandType::DepositFunds, || {
            Ok(Parsed {
                account_id: AccountId::parse(request.account_id)?,
                command: Command::Deposit {
                    amount: Amount::parse(request.amount)?,
                    expected_version: request.expected_version,
                },
                command_id: CommandId::parse_optional(request.command_id)?,
            })
        })
        .await
    }

    async fn withdraw_funds(
        &self,
        request: Request<pb::WithdrawFundsRequest>,
    ) -> Result<Response<pb::CommandReply>, Status> {
        let request = request.into_inner();
        self.handle(CommandType::WithdrawFunds, || {
            Ok(Parsed {
                account_id: AccountId::parse(request.account_id)?,
                command: Command::Withdraw {
                    amount: Amount::parse(request.amount)?,
                    expected_version: request.expected_version,
                },
                command_id: CommandId::parse_optional(request.command_id)?,
            })
        })
        .await
    }

    async fn close_account(
        &self,
        request: Request<pb::CloseAccountRequest>,
    ) -> Result<Response<pb::CommandReply>, Status> {
        let request = request.into_inner();
        self.handle(CommandType::CloseAccount, || {
            Ok(Parsed {
                account_id: AccountId::parse(request.account_id)?,
                command: Command::Close { expected_version: request.expected_version },
                command_id: CommandId::parse_optional(request.command_id)?,
            })
        })
        .await
    }
}
