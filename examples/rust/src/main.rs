//! The README's walk-through as a Rust client of authsvc: Login, Challenge (and a refused resend,
//! whose rich error details it decodes), Verify with the code read from the file provider's
//! outbox, ValidateSession, a step-up whose grant it redeems, Logout, and the refused
//! ValidateSession of the ended session.
//!
//! Stubs: tonic-prost-build in build.rs (from proto/, into OUT_DIR). Rich errors: tonic-types
//! decodes the google.rpc.Status of grpc-status-details-bin. Settings (environment):
//! AUTHSVC_EXAMPLE_SERVER (127.0.0.1:50051), AUTHSVC_CLIENT_API_KEY (else var/dev-backend.key),
//! AUTHSVC_EXAMPLE_ORG, AUTHSVC_EXAMPLE_LOGIN, AUTHSVC_CLIENT_PASSWORD, AUTHSVC_OUTBOX_FILE
//! (var/outbox.jsonl).

use std::env;
use std::error::Error;
use std::fs;
use std::time::Duration;

use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Status};
use tonic_types::StatusExt;

mod authsvc {
    tonic::include_proto!("authsvc.v1");
}

use authsvc::auth_service_client::AuthServiceClient;
use authsvc::{
    ActionValues, AuthorizeSensitiveActionRequest, ChallengeRequest, ClientContext, LoginRequest,
    LogoutRequest, PasswordCredential, RedeemActionGrantRequest, SensitiveAction,
    ValidateSessionRequest, VerifyRequest, login_request, login_response, verify_response,
};

type Result<T> = std::result::Result<T, Box<dyn Error>>;
/// Adds the backend's API key to every call.
type Interceptor = Box<dyn FnMut(Request<()>) -> std::result::Result<Request<()>, Status>>;
type Client = AuthServiceClient<InterceptedService<Channel, Interceptor>>;

fn setting(name: &str, default: &str) -> String {
    env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn api_key() -> Result<String> {
    if let Ok(key) = env::var("AUTHSVC_CLIENT_API_KEY")
        && !key.trim().is_empty()
    {
        return Ok(key.trim().to_owned());
    }
    match fs::read_to_string("var/dev-backend.key") {
        Ok(key) => Ok(key.trim().to_owned()),
        Err(_) => Err("set AUTHSVC_CLIENT_API_KEY (the backend's API key)".into()),
    }
}

fn client_context() -> Option<ClientContext> {
    Some(ClientContext {
        ip_address: "127.0.0.1".into(),
        user_agent: "authsvc-example-rust".into(),
    })
}

/// The file provider appends one JSON object per message; the code ends the SMS text ("#123456").
fn outbox_lines(outbox: &str) -> Vec<String> {
    fs::read_to_string(outbox)
        .map(|text| {
            text.lines()
                .filter(|line| !line.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn code_in(text: &str) -> Option<String> {
    let (_, code) = text.rsplit_once('#')?;
    (code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit())).then(|| code.to_owned())
}

async fn code_sent_after(outbox: &str, seen: usize) -> Result<String> {
    for _ in 0..500 {
        for line in outbox_lines(outbox).iter().skip(seen) {
            let message: serde_json::Value = serde_json::from_str(line)?;
            let channel = message["channel"].as_str().unwrap_or_default();
            if let (true, Some(code)) = (
                channel == "sms",
                code_in(message["text"].as_str().unwrap_or_default()),
            ) {
                return Ok(code);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(format!("no code in {outbox}").into())
}

/// tonic names codes in CamelCase (ResourceExhausted); print the gRPC spelling.
fn grpc_code_name(code: tonic::Code) -> String {
    let mut name = String::new();
    for (i, c) in format!("{code:?}").chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    name
}

/// A refused call's google.rpc.Status (grpc-status-details-bin): ErrorInfo and RetryInfo.
fn describe_refusal(status: &Status) -> Result<String> {
    let details = status.get_error_details();
    let Some(info) = details.error_info() else {
        return Err(format!("not a deliberate answer of the service: {status}").into());
    };
    let wait = details
        .retry_info()
        .and_then(|retry| retry.retry_delay)
        .map(|delay| format!(" retry_after={}s", delay.as_secs()))
        .unwrap_or_default();
    Ok(format!(
        "{} {}/{}{wait}",
        grpc_code_name(status.code()),
        info.domain,
        info.reason
    ))
}

fn refused<T>(answer: std::result::Result<T, Status>) -> Result<String> {
    match answer {
        Ok(_) => Err("the call was expected to be refused".into()),
        Err(status) => describe_refusal(&status),
    }
}

async fn connect() -> Result<Client> {
    let server = setting("AUTHSVC_EXAMPLE_SERVER", "127.0.0.1:50051");
    let channel = Channel::from_shared(format!("http://{server}"))?
        .connect()
        .await?;
    // Every call carries the backend's credentials; the end user's context travels in the request.
    let bearer: MetadataValue<_> = format!("Bearer {}", api_key()?).parse()?;
    let with_api_key: Interceptor = Box::new(move |mut request: Request<()>| {
        request
            .metadata_mut()
            .insert("authorization", bearer.clone());
        Ok(request)
    });
    Ok(AuthServiceClient::with_interceptor(channel, with_api_key))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let organization_siret = setting("AUTHSVC_EXAMPLE_ORG", "21180001500011");
    let login = setting("AUTHSVC_EXAMPLE_LOGIN", "admin");
    let outbox = setting("AUTHSVC_OUTBOX_FILE", "var/outbox.jsonl");
    let password =
        env::var("AUTHSVC_CLIENT_PASSWORD").map_err(|_| "set AUTHSVC_CLIENT_PASSWORD")?;
    let mut auth = connect().await?;

    let started = auth
        .login(LoginRequest {
            organization_siret,
            login,
            credential: Some(login_request::Credential::Password(PasswordCredential {
                password,
            })),
            client: client_context(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let Some(login_response::Result::PendingFlow(flow)) = started.result else {
        return Err("expected a pending flow (no device token sent)".into());
    };
    println!("login: a code is required (flow {})", flow.flow_id);

    let seen = outbox_lines(&outbox).len();
    let challenge_request = ChallengeRequest {
        flow_id: flow.flow_id.clone(),
        client: client_context(),
        ..Default::default()
    };
    let challenge = auth
        .challenge(challenge_request.clone())
        .await?
        .into_inner();
    println!(
        "challenge: code sent to {}, {} sends left",
        challenge.masked_destination, challenge.sends_remaining
    );
    println!(
        "resend refused: {}",
        refused(auth.challenge(challenge_request).await)?
    );

    let code = code_sent_after(&outbox, seen).await?;
    let verified = auth
        .verify(VerifyRequest {
            flow_id: flow.flow_id,
            code,
            client: client_context(),
        })
        .await?
        .into_inner();
    let Some(verify_response::Result::Login(signed_in)) = verified.result else {
        return Err("expected a login verification".into());
    };
    let session_token = signed_in
        .session
        .map(|session| session.token)
        .unwrap_or_default();
    println!("verify: session opened, device trusted");

    let validate = ValidateSessionRequest {
        session_token: session_token.clone(),
        client: client_context(),
    };
    let who = auth.validate_session(validate.clone()).await?.into_inner();
    println!(
        "validate: {} {} {}",
        who.login,
        who.role().as_str_name().trim_start_matches("ROLE_"),
        who.assurance_level()
            .as_str_name()
            .trim_start_matches("ASSURANCE_LEVEL_")
    );

    let action = SensitiveAction::ChangeOwnPassword;
    let step_up = auth
        .authorize_sensitive_action(AuthorizeSensitiveActionRequest {
            session_token: session_token.clone(),
            action: action.into(),
            new_values: Some(ActionValues::default()),
            client: client_context(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let step_up_flow = step_up
        .pending_flow
        .map(|flow| flow.flow_id)
        .unwrap_or_default();
    let seen = outbox_lines(&outbox).len();
    auth.challenge(ChallengeRequest {
        flow_id: step_up_flow.clone(),
        client: client_context(),
        ..Default::default()
    })
    .await?;
    let code = code_sent_after(&outbox, seen).await?;
    let granted = auth
        .verify(VerifyRequest {
            flow_id: step_up_flow,
            code,
            client: client_context(),
        })
        .await?
        .into_inner();
    let Some(verify_response::Result::ActionGrant(grant)) = granted.result else {
        return Err("expected an action grant".into());
    };
    auth.redeem_action_grant(RedeemActionGrantRequest {
        session_token: session_token.clone(),
        grant_token: grant.grant_token,
        action: action.into(),
        target_account_id: grant.target_account_id,
        new_values: Some(ActionValues::default()),
        client: client_context(),
    })
    .await?;
    println!(
        "step-up: grant for {} redeemed",
        action.as_str_name().trim_start_matches("SENSITIVE_ACTION_")
    );

    auth.logout(LogoutRequest {
        session_token,
        client: client_context(),
    })
    .await?;
    println!("logout: done");
    println!(
        "validate after logout refused: {}",
        refused(auth.validate_session(validate).await)?
    );
    println!("walk-through complete");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{code_in, grpc_code_name};

    #[test]
    fn the_code_is_the_six_digits_after_the_last_hash() {
        assert_eq!(
            code_in("Votre code PEP's : 123456\n\n@peps.example #123456").as_deref(),
            Some("123456")
        );
        assert_eq!(code_in("no code here"), None);
        assert_eq!(code_in("@peps.example #12345"), None);
        assert_eq!(code_in("@peps.example #12345a"), None);
    }

    #[test]
    fn codes_print_in_the_grpc_spelling() {
        assert_eq!(
            grpc_code_name(tonic::Code::ResourceExhausted),
            "RESOURCE_EXHAUSTED"
        );
        assert_eq!(
            grpc_code_name(tonic::Code::Unauthenticated),
            "UNAUTHENTICATED"
        );
    }
}
