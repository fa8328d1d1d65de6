//! Registering, signing in (with the second factor when the account has one) and signing out.

use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use flashmart_app::auth::{AuthError, Registration};
use flashmart_domain::Role;
use flashmart_http::AppState;
use flashmart_http::extract::ClientIp;
use maud::{Markup, html};
use serde::Deserialize;

use crate::layout::{PageError, PageResult, csrf_field, errors_box, problem, shop_page};
use crate::session::{Nothing, Posted, Viewer, ended_session, local_path, session_cookies};

#[derive(Debug, Deserialize)]
pub struct NextParam {
    next: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct SignInForm {
    #[serde(default)]
    email: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    code: String,
    next: Option<String>,
}

struct SignInShown<'a> {
    email: &'a str,
    next: &'a str,
    ask_code: bool,
    error: Option<String>,
}

fn sign_in_form(viewer: &Viewer, shown: &SignInShown<'_>) -> Markup {
    html! {
        @if let Some(e) = &shown.error { (problem(e)) }
        form.stack method="post" action="/signin" {
            (csrf_field(viewer))
            input type="hidden" name="next" value=(shown.next);
            label for="email" { "Email" }
            input #email type="email" name="email" autocomplete="username" required value=(shown.email);
            label for="password" { "Password" }
            input #password type="password" name="password" autocomplete="current-password" required;
            @if shown.ask_code {
                label for="code" { "Authentication code" }
                input #code type="text" name="code" inputmode="numeric" autocomplete="one-time-code"
                    aria-describedby="code-help" required;
                p #code-help .help { "The six digits your authenticator app shows, or a recovery code." }
            }
            button type="submit" { "Sign in" }
        }
        p { "New here? " a href="/register" { "Register" } }
    }
}

pub async fn sign_in_page(viewer: Viewer, Query(q): Query<NextParam>) -> Response {
    let next = local_path(q.next.as_deref(), "/");
    let shown = SignInShown {
        email: "",
        next,
        ask_code: false,
        error: None,
    };
    shop_page(&viewer, "Sign in", sign_in_form(&viewer, &shown)).into_response()
}

pub async fn sign_in(
    State(state): State<AppState>,
    viewer: Viewer,
    ClientIp(ip): ClientIp,
    Posted(form): Posted<SignInForm>,
) -> PageResult {
    let next = local_path(form.next.as_deref(), "/");
    let code = Some(form.code.trim()).filter(|c| !c.is_empty());
    let failed = |error: &str, ask_code: bool, status: StatusCode| {
        let shown = SignInShown {
            email: &form.email,
            next,
            ask_code,
            error: Some(error.to_owned()),
        };
        (
            status,
            shop_page(&viewer, "Sign in", sign_in_form(&viewer, &shown)),
        )
            .into_response()
    };
    match state
        .auth
        .login(form.email.trim(), &form.password, code, ip)
        .await
    {
        Ok(pair) => {
            let mut response = Redirect::to(next).into_response();
            for c in session_cookies(&pair, viewer.secure) {
                response.headers_mut().append(header::SET_COOKIE, c);
            }
            Ok(response)
        }
        Err(AuthError::SecondFactorRequired) => Ok(failed(
            "This account has a second factor: enter your password again with the code.",
            true,
            StatusCode::UNAUTHORIZED,
        )),
        Err(AuthError::SecondFactorWrong) => Ok(failed(
            "That code is not right.",
            true,
            StatusCode::UNAUTHORIZED,
        )),
        Err(AuthError::BadCredentials | AuthError::Invalid(_)) => Ok(failed(
            "That email and password do not match an account.",
            code.is_some(),
            StatusCode::UNAUTHORIZED,
        )),
        Err(AuthError::RateLimited(retry)) => Ok(failed(
            &format!(
                "Too many attempts; try again in {} seconds.",
                retry.as_secs_ceil()
            ),
            code.is_some(),
            StatusCode::TOO_MANY_REQUESTS,
        )),
        Err(e) => Err(PageError::internal(&e)),
    }
}

#[derive(Debug, Deserialize)]
pub struct RegisterForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    password: String,
}

fn register_form(viewer: &Viewer, name: &str, email: &str, errors: &[String]) -> Markup {
    html! {
        (errors_box("Please fix:", errors))
        form.stack method="post" action="/register" {
            (csrf_field(viewer))
            label for="name" { "Name" }
            input #name type="text" name="name" autocomplete="name" required value=(name);
            label for="email" { "Email" }
            input #email type="email" name="email" autocomplete="email" required value=(email);
            label for="password" { "Password" }
            input #password type="password" name="password" autocomplete="new-password" required
                minlength="10" aria-describedby="password-help";
            p #password-help .help { "At least 10 characters, not your email." }
            button type="submit" { "Register" }
        }
        p { "Have an account? " a href="/signin" { "Sign in" } }
    }
}

pub async fn register_page(viewer: Viewer) -> Response {
    shop_page(&viewer, "Register", register_form(&viewer, "", "", &[])).into_response()
}

pub async fn register(
    State(state): State<AppState>,
    viewer: Viewer,
    ClientIp(ip): ClientIp,
    Posted(form): Posted<RegisterForm>,
) -> PageResult {
    let again = |errors: Vec<String>| {
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            shop_page(
                &viewer,
                "Register",
                register_form(&viewer, &form.name, &form.email, &errors),
            ),
        )
            .into_response()
    };
    let registration = match Registration::parse(&form.email, form.password.clone(), &form.name) {
        Ok(r) => r,
        Err(AuthError::Invalid(fields) | AuthError::WeakPassword(fields)) => {
            return Ok(again(fields.iter().map(ToString::to_string).collect()));
        }
        Err(e) => return Err(PageError::internal(&e)),
    };
    match state.auth.register(registration, Role::Customer).await {
        Ok(_) => {}
        Err(AuthError::EmailTaken) => {
            return Ok(again(vec![
                "email: that email is registered already; sign in instead".to_owned(),
            ]));
        }
        Err(e) => return Err(PageError::internal(&e)),
    }
    let pair = state
        .auth
        .login(form.email.trim(), &form.password, None, ip)
        .await
        .map_err(|e| PageError::internal(&e))?;
    let mut response = Redirect::to("/").into_response();
    for c in session_cookies(&pair, viewer.secure) {
        response.headers_mut().append(header::SET_COOKIE, c);
    }
    Ok(response)
}

pub async fn sign_out(
    State(state): State<AppState>,
    viewer: Viewer,
    Posted(Nothing {}): Posted<Nothing>,
) -> PageResult {
    if let Some(principal) = &viewer.principal
        && let Err(e) = state.auth.logout(principal).await
    {
        return Err(PageError::internal(&e));
    }
    let mut response = Redirect::to("/").into_response();
    for c in ended_session(viewer.secure) {
        response.headers_mut().append(header::SET_COOKIE, c);
    }
    Ok(response)
}
