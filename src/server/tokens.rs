//! `token_create`, `token_list`, `token_revoke`: the HTTP API's tokens, kept by
//! [`Tokens`](crate::tokens::Tokens) in `<root>/tokens.yaml`.

use super::Context;
use crate::protocol::{ErrorCode, Response, TokenCreated, TokenInfo, TokenList};
use crate::tokens::{Scope, TokenEntry, TokenError};

fn info(e: &TokenEntry) -> TokenInfo {
    TokenInfo {
        name: e.name.clone(),
        scope: e.scope.as_str().to_string(),
        created: e.created.clone(),
    }
}

fn refused(e: TokenError) -> Response {
    let code = match &e {
        TokenError::InvalidName(..) => ErrorCode::InvalidName,
        TokenError::Exists(_) => ErrorCode::BadRequest,
        TokenError::NotFound(_) => ErrorCode::NotFound,
        TokenError::Io(_) => ErrorCode::Internal,
    };
    Response::err(code, e.to_string())
}

/// Creates a token and answers its secret (the file is written and flushed on the
/// blocking pool, off the runtime's threads).
pub(super) async fn create(ctx: &Context, name: String, scope: &str) -> Response {
    let Some(scope) = Scope::parse(scope) else {
        return Response::err(
            ErrorCode::BadRequest,
            format!("scope {scope:?} is neither read nor write"),
        );
    };
    let tokens = ctx.tokens.clone();
    match tokio::task::spawn_blocking(move || tokens.create(&name, scope)).await {
        Ok(Ok((token, entry))) => {
            tracing::info!(token = entry.name, scope = scope.as_str(), "token created");
            Response::answer(&TokenCreated {
                info: info(&entry),
                token,
            })
        }
        Ok(Err(e)) => refused(e),
        Err(e) => Response::err(ErrorCode::Internal, format!("token_create panicked: {e}")),
    }
}

/// Every token's name, scope and creation time.
pub(super) fn list(ctx: &Context) -> Response {
    Response::answer(&TokenList {
        tokens: ctx.tokens.list().iter().map(info).collect(),
    })
}

/// Revokes a token; the HTTP API refuses it from the moment this is answered.
pub(super) async fn revoke(ctx: &Context, name: String) -> Response {
    let tokens = ctx.tokens.clone();
    match tokio::task::spawn_blocking(move || tokens.revoke(&name)).await {
        Ok(Ok(entry)) => {
            tracing::info!(token = entry.name, "token revoked");
            Response::answer(&info(&entry))
        }
        Ok(Err(e)) => refused(e),
        Err(e) => Response::err(ErrorCode::Internal, format!("token_revoke panicked: {e}")),
    }
}
