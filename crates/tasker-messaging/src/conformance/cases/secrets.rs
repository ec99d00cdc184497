//! Secrets: no error shows a password (C15).

use crate::conformance::support::prelude::*;
use crate::conformance::Credentials;
use crate::service::{MessagingHealth, ProviderKind};

/// The forms a password can take in a message: as given, and percent-encoded as in a URL.
fn password_forms(password: &str) -> Vec<String> {
    let mut forms = vec![password.to_owned()];
    if let Ok(mut url) = url::Url::parse("scheme://user@host/") {
        if url.set_password(Some(password)).is_ok() {
            if let Some(encoded) = url.password() {
                forms.push(encoded.to_owned());
            }
        }
    }
    forms
}

/// A service connected with a wrong password fails, and no error (Display or Debug) nor
/// health report shows the password.
pub(super) async fn c15_no_password_in_errors(ctx: Ctx) -> CaseResultInner {
    let (factory, password) = match &ctx.hooks.credentials {
        Some(Credentials::WrongPassword { factory, password }) => {
            (factory.clone(), password.clone())
        }
        Some(Credentials::NoPassword(why)) => {
            ctx.not_applicable(why.clone());
            return Ok(());
        }
        None if ctx.service.provider() == ProviderKind::InMemory => {
            ctx.not_applicable("the in-memory provider has no password");
            return Ok(());
        }
        None => {
            return Err(
                "the instantiation gives no wrong-password service (Suite::credentials) and \
                 does not declare that the provider has no password"
                    .into(),
            )
        }
    };
    let mut texts = Vec::new();
    let show = |what: &str, e: &MessagingError| format!("{what}: {e} / {e:?}");
    match factory().await {
        Err(e) => texts.push(show("connect + initialize", &e)),
        Ok(svc) => {
            let q = ctx.queue_name("pw");
            match svc.health_check().await {
                Ok(MessagingHealth::Healthy { .. }) => {}
                Ok(other) => texts.push(format!("health_check: {other:?}")),
                Err(e) => texts.push(show("health_check", &e)),
            }
            if let Err(e) = svc.create_queue(&q).await {
                texts.push(show("create_queue", &e));
            }
            if let Err(e) = svc.send(&q, OutgoingMessage::new("x")).await {
                texts.push(show("send", &e));
            }
            if let Err(e) = svc.receive(&q, 1, ctx.unit).await {
                texts.push(show("receive", &e));
            }
            if let Err(e) = svc.get_queue_stats(&q).await {
                texts.push(show("stats", &e));
            }
            ctx.disconnect(svc).await;
        }
    }
    ensure!(
        !texts.is_empty(),
        "the service connected with a wrong password worked: the test's credentials are not wrong"
    );
    for form in password_forms(&password) {
        if let Some(leak) = texts.iter().find(|t| t.contains(&form)) {
            return Err(format!("an error shows the password: {leak}"));
        }
    }
    Ok(())
}
