//! The web pages over HTTP, as a browser without script uses them: the session in httpOnly,
//! SameSite=Strict cookies, forms refused without this browser's anti-forgery token, the
//! security headers of every page, a purchase through the forms (on every store these tests run
//! on), an expired access token refreshed from its cookie, and the console kept for staff. The
//! stories with script (live stock, the order turning paid) run in Chromium:
//! scripts/browser-tests.

use std::collections::BTreeMap;

use axum::http::{StatusCode, header};
use flashmart_domain::Role;
use serde_json::json;
use time::Duration;
use time::format_description::well_known::Rfc3339;

use crate::catalog::{operator, product_id};
use crate::commerce::app;
use crate::support::{TestApp, TestResponse};

/// A browser: its cookie jar, and form posts that carry its anti-forgery token.
struct Browser<'a> {
    app: &'a TestApp,
    cookies: BTreeMap<String, String>,
}

fn form_encode(fields: &[(&str, &str)]) -> String {
    let enc = |s: &str| {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                    char::from(b).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect::<String>()
    };
    fields
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

impl<'a> Browser<'a> {
    fn new(app: &'a TestApp) -> Self {
        Self {
            app,
            cookies: BTreeMap::new(),
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn keep(&mut self, res: &TestResponse) {
        for value in res.headers.get_all(header::SET_COOKIE) {
            let value = value.to_str().unwrap();
            let (pair, attrs) = value.split_once(';').unwrap_or((value, ""));
            let (name, v) = pair.split_once('=').unwrap();
            if v.is_empty() || attrs.contains("Max-Age=0") {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.to_owned(), v.to_owned());
            }
        }
    }

    async fn get(&mut self, path: &str) -> TestResponse {
        let res = self
            .app
            .get(path)
            .header("cookie", &self.cookie_header())
            .send()
            .await;
        self.keep(&res);
        res
    }

    /// Posts `fields` and this browser's anti-forgery token.
    async fn submit(&mut self, path: &str, fields: &[(&str, &str)]) -> TestResponse {
        let csrf = self.csrf();
        let mut all = vec![("csrf", csrf.as_str())];
        all.extend_from_slice(fields);
        self.post_raw(path, &form_encode(&all)).await
    }

    async fn post_raw(&mut self, path: &str, body: &str) -> TestResponse {
        let res = self
            .app
            .post(path)
            .header("cookie", &self.cookie_header())
            .raw("application/x-www-form-urlencoded", body.to_owned())
            .send()
            .await;
        self.keep(&res);
        res
    }

    /// Opens the sign-in page and signs in.
    async fn sign_in(&mut self, email: &str, password: &str) -> TestResponse {
        self.get("/signin").await;
        self.submit("/signin", &[("email", email), ("password", password)])
            .await
    }

    fn csrf(&self) -> String {
        self.cookies
            .get(flashmart_web::CSRF_COOKIE)
            .cloned()
            .unwrap_or_default()
    }
}

fn location(res: &TestResponse) -> String {
    res.headers[header::LOCATION].to_str().unwrap().to_owned()
}

fn set_cookies(res: &TestResponse) -> Vec<String> {
    res.headers
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

/// What the shopper's forms need: a product and the WELCOME10 coupon.
async fn shop(app: &TestApp) -> String {
    let op = operator(app).await;
    let product = product_id(
        app,
        &op,
        json!({"name": "Heavyweight Hoodie", "price_cents": 5900, "stock": 5, "category": "apparel"}),
    )
    .await;
    let ends = flashmart_app::Clock::now(&app.clock) + Duration::days(7);
    let coupon = app
        .post("/api/v1/admin/coupons")
        .bearer(&op)
        .json(
            &json!({"code": "WELCOME10", "kind": "percent", "percent": 10,
            "ends_at": ends.format(&Rfc3339).unwrap()}),
        )
        .send()
        .await;
    assert_eq!(coupon.status, StatusCode::CREATED, "{}", coupon.text());
    product
}

async fn register(b: &mut Browser<'_>, email: &str) {
    b.get("/register").await;
    let res = b
        .submit(
            "/register",
            &[
                ("name", "Web Shopper"),
                ("email", email),
                ("password", "web shopper password"),
            ],
        )
        .await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.text());
    assert!(b.cookies.contains_key(flashmart_web::ACCESS_COOKIE));
    assert!(b.cookies.contains_key(flashmart_web::REFRESH_COOKIE));
}

#[tokio::test]
async fn every_page_has_a_strict_policy_no_inline_script_and_a_strict_cookie() {
    let app = app().await;
    let product = shop(&app).await;
    let mut b = Browser::new(&app);
    for path in [
        "/".to_owned(),
        "/?q=hoodie".to_owned(),
        format!("/products/{product}"),
        "/signin".to_owned(),
        "/register".to_owned(),
        "/flash-sales".to_owned(),
        "/no-such-product-page/really".to_owned(),
        "/products/not-an-id".to_owned(),
    ] {
        let res = b.get(&path).await;
        let html = res.text();
        if res.status == StatusCode::OK || path.starts_with("/products/not") {
            assert_eq!(
                res.headers[header::CONTENT_SECURITY_POLICY],
                flashmart_web::PAGE_CSP,
                "{path}"
            );
            assert_eq!(res.headers[header::X_FRAME_OPTIONS], "DENY", "{path}");
            assert!(html.starts_with("<!DOCTYPE html>"), "{path}");
            // Scripts only from files, no inline handlers, no inline styles.
            assert!(!html.contains("<script>"), "{path}");
            for attr in [" onclick=", " onload=", " onsubmit=", " style="] {
                assert!(!html.contains(attr), "{path} has {attr}");
            }
        }
    }
    assert_eq!(
        b.get("/products/not-an-id").await.status,
        StatusCode::NOT_FOUND
    );
    // An address nothing answers: a page for a browser, the envelope for anyone else.
    let page = app
        .get("/no-such-page")
        .header("accept", "text/html,application/xhtml+xml,*/*;q=0.8")
        .send()
        .await;
    assert_eq!(page.status, StatusCode::NOT_FOUND);
    assert_eq!(
        page.headers[header::CONTENT_SECURITY_POLICY],
        flashmart_web::PAGE_CSP
    );
    assert!(page.text().contains("There is nothing here."));
    app.get("/no-such-page")
        .send()
        .await
        .assert_error(StatusCode::NOT_FOUND, 404);
    app.get("/api/v1/no-such-route")
        .header("accept", "text/html")
        .send()
        .await
        .assert_error(StatusCode::NOT_FOUND, 404);
    let first = app.get("/").send().await;
    let cookie = set_cookies(&first)
        .into_iter()
        .find(|c| c.starts_with(flashmart_web::CSRF_COOKIE))
        .unwrap();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(!cookie.contains("Secure"), "plain HTTP: {cookie}");
    // Behind TLS (a proxy says so), cookies are Secure.
    let tls = app
        .get("/signin")
        .header("x-forwarded-proto", "https")
        .send()
        .await;
    assert!(set_cookies(&tls).iter().all(|c| c.contains("; Secure")));
    // The assets are this server's own.
    let js = app.get("/assets/app.js").send().await;
    assert_eq!(js.status, StatusCode::OK);
    assert!(
        js.headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    assert!(!js.text().contains("localStorage") && !js.text().contains("sessionStorage"));
}

#[tokio::test]
async fn forms_without_this_browsers_token_change_nothing() {
    let app = app().await;
    let product = shop(&app).await;
    app.customer("victim@example.com", "victim password 1")
        .await;
    let mut b = Browser::new(&app);
    b.get("/signin").await;
    // Signing in without the token, or with another browser's, is refused.
    for body in [
        "email=victim%40example.com&password=victim+password+1".to_owned(),
        "csrf=0123456789abcdef0123456789abcdef&email=victim%40example.com&password=victim+password+1"
            .to_owned(),
    ] {
        let res = b.post_raw("/signin", &body).await;
        assert_eq!(res.status, StatusCode::FORBIDDEN, "{}", res.text());
        assert!(!b.cookies.contains_key(flashmart_web::ACCESS_COOKIE));
    }
    // With it, the session starts.
    let res = b
        .submit(
            "/signin",
            &[
                ("email", "victim@example.com"),
                ("password", "victim password 1"),
            ],
        )
        .await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.text());
    // A forged add-to-cart (the session cookie, but not the token) adds nothing.
    let forged = b
        .post_raw("/cart", &format!("product_id={product}&quantity=1"))
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    assert!(b.get("/cart").await.text().contains("Your cart is empty"));
    let added = b
        .submit("/cart", &[("product_id", &product), ("quantity", "2")])
        .await;
    assert_eq!(added.status, StatusCode::SEE_OTHER);
    assert!(b.get("/cart").await.text().contains("Heavyweight Hoodie"));
}

#[tokio::test]
async fn a_shopper_buys_through_the_forms_and_the_order_turns_paid() {
    let app = app().await;
    let product = shop(&app).await;
    let mut b = Browser::new(&app);
    // Pages that need a session send the visitor to sign in, then back.
    let cart = b.get("/cart").await;
    assert_eq!(cart.status, StatusCode::SEE_OTHER);
    assert_eq!(location(&cart), "/signin?next=/cart");
    // A form posted without a session goes to sign in, and back to the page it was on.
    let res = app
        .post("/cart")
        .header("host", "shop.test")
        .header("referer", &format!("http://shop.test/products/{product}"))
        .raw(
            "application/x-www-form-urlencoded",
            format!("product_id={product}"),
        )
        .send()
        .await;
    assert_eq!(location(&res), format!("/signin?next=/products/{product}"));
    register(&mut b, "web-shopper@example.com").await;

    let found = b.get("/?q=hoodie").await.text();
    assert!(
        found.contains("Heavyweight Hoodie") && found.contains("1 products"),
        "{found}"
    );
    let res = b
        .submit("/cart", &[("product_id", &product), ("quantity", "1")])
        .await;
    assert_eq!(location(&res), "/cart");
    let checkout = b.get("/cart/checkout").await;
    assert!(checkout.text().contains("Place order"));
    let res = b
        .submit(
            "/cart/checkout",
            &[
                ("ship_to", "new"),
                ("recipient", "Web Shopper"),
                ("line1", "1 Test Street"),
                ("city", "Berlin"),
                ("postal_code", "10115"),
                ("country", "de"),
                ("save", "1"),
                ("coupon", "WELCOME10"),
            ],
        )
        .await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.text());
    let order_url = location(&res);
    let order = b.get(&order_url).await.text();
    assert!(
        order.contains("awaiting payment") && order.contains("53.10 USD"),
        "{order}"
    );
    // The address was saved: the next checkout offers it.
    b.submit("/cart", &[("product_id", &product), ("quantity", "1")])
        .await;
    assert!(
        b.get("/cart/checkout")
            .await
            .text()
            .contains("1 Test Street")
    );

    let pay = b.submit(&format!("{order_url}/pay"), &[]).await;
    assert_eq!(pay.status, StatusCode::SEE_OTHER, "{}", pay.text());
    let pay_url = location(&pay);
    let (pay_path, back) = pay_url.split_once('?').unwrap();
    assert!(pay_path.starts_with("/sandbox/pay/"), "{pay_url}");
    assert_eq!(back, format!("return={order_url}"));
    // The provider's page, and its Pay button, which sends the buyer back to the order.
    let page = b.get(&pay_url).await;
    let token = page
        .text()
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_owned();
    let paid = b
        .post_raw(&format!("{pay_path}/pay?{back}"), &format!("csrf={token}"))
        .await;
    assert_eq!(paid.status, StatusCode::SEE_OTHER, "{}", paid.text());
    assert_eq!(location(&paid), order_url);
    app.notifications_delivered(1).await;
    let status = b.get(&format!("{order_url}/status")).await;
    assert_eq!(status.json()["status"], "paid", "{}", status.text());
    assert!(b.get("/orders").await.text().contains(">paid<"));
    // A return address off this site is ignored.
    let stray = app
        .get(&format!("{pay_path}?return=//evil.example/x"))
        .send()
        .await
        .text();
    assert!(!stray.contains("evil.example"));
    let odd = app
        .get(&format!("{pay_path}?return=/caf%C3%A9"))
        .send()
        .await;
    assert_eq!(odd.status, StatusCode::OK);
    assert!(!odd.text().contains("Back to the shop"));
    let fine = app.get(&format!("{pay_path}?{back}")).send().await.text();
    assert!(
        fine.contains(&format!("<a href=\"{order_url}\">Back to the shop</a>")),
        "{fine}"
    );
}

#[tokio::test]
async fn an_expired_access_token_is_refreshed_once_for_requests_that_race() {
    let app = app().await;
    let mut b = Browser::new(&app);
    register(&mut b, "refresh@example.com").await;
    let old_access = b.cookies[flashmart_web::ACCESS_COOKIE].clone();
    app.clock.advance(Duration::minutes(16));
    // Two requests of one page present the same refresh token at once: both go through, and
    // the session lives on (a second rotation of one token would end it as reuse).
    let cookie = b.cookie_header();
    let (one, two) = tokio::join!(
        app.get("/orders").header("cookie", &cookie).send(),
        app.get("/orders").header("cookie", &cookie).send()
    );
    assert_eq!(one.status, StatusCode::OK, "{}", one.text());
    assert_eq!(two.status, StatusCode::OK, "{}", two.text());
    b.keep(&one);
    assert_ne!(b.cookies[flashmart_web::ACCESS_COOKIE], old_access);
    assert_eq!(b.get("/orders").await.status, StatusCode::OK);

    // Signing out ends the session: its cookies are gone, and the tokens are refused.
    let session = b.cookie_header();
    let out = b.submit("/signout", &[]).await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    assert!(!b.cookies.contains_key(flashmart_web::ACCESS_COOKIE));
    let replayed = app.get("/orders").header("cookie", &session).send().await;
    assert_eq!(
        replayed.status,
        StatusCode::SEE_OTHER,
        "the old cookies are dead"
    );
}

#[tokio::test]
async fn the_console_is_for_staff_and_users_for_admins() {
    let app = app().await;
    let mut visitor = Browser::new(&app);
    let res = visitor.get("/admin").await;
    assert_eq!(location(&res), "/signin?next=/admin");

    let mut shopper = Browser::new(&app);
    register(&mut shopper, "not-staff@example.com").await;
    assert_eq!(shopper.get("/admin").await.status, StatusCode::FORBIDDEN);
    assert_eq!(
        shopper.get("/admin/products").await.status,
        StatusCode::FORBIDDEN
    );

    app.staff("ops@example.com", "operator password", Role::Operator)
        .await;
    let mut op = Browser::new(&app);
    op.get("/signin").await;
    let res = op
        .submit(
            "/signin",
            &[
                ("email", "ops@example.com"),
                ("password", "operator password"),
                ("next", "/admin"),
            ],
        )
        .await;
    assert_eq!(location(&res), "/admin");
    for page in [
        "/admin",
        "/admin/products",
        "/admin/products/new",
        "/admin/coupons",
        "/admin/flash-sales",
        "/admin/flash-sales/new",
        "/admin/schedules",
        "/admin/orders",
    ] {
        let res = op.get(page).await;
        assert_eq!(res.status, StatusCode::OK, "{page}: {}", res.text());
    }
    assert_eq!(op.get("/admin/users").await.status, StatusCode::FORBIDDEN);
    // A coupon made in the console.
    let res = op
        .submit(
            "/admin/coupons",
            &[
                ("code", "CONSOLE5"),
                ("kind", "fixed"),
                ("value", "5.00"),
                ("ends_at", "2099-01-01T00:00"),
            ],
        )
        .await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.text());
    assert!(op.get("/admin/coupons").await.text().contains("CONSOLE5"));
    // The sign-in page never sends anyone off this site.
    let res = op
        .submit(
            "/signin",
            &[
                ("email", "ops@example.com"),
                ("password", "operator password"),
                ("next", "https://evil.example/"),
            ],
        )
        .await;
    assert_eq!(location(&res), "/");
}

#[tokio::test]
async fn staff_sign_in_with_their_second_factor_and_without_it_stay_out() {
    let app = TestApp::with_config(|c| c.auth.require_staff_totp = true).await;
    let token = app
        .staff("ops@example.com", "operator password", Role::Operator)
        .await;
    let mut op = Browser::new(&app);
    op.sign_in("ops@example.com", "operator password").await;
    // Signed in, but without the second factor the configuration asks staff for.
    let res = op.get("/admin").await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);
    assert!(res.text().contains("second factor"), "{}", res.text());

    let (secret, _) = crate::second_factor::switch_on(&app, &token).await;
    app.clock.advance(Duration::seconds(30));
    let mut op = Browser::new(&app);
    op.get("/signin?next=/admin").await;
    let signin = [
        ("email", "ops@example.com"),
        ("password", "operator password"),
        ("next", "/admin"),
    ];
    // The page asks for the code.
    let asked = op.submit("/signin", &signin).await;
    assert_eq!(asked.status, StatusCode::UNAUTHORIZED);
    assert!(
        asked.text().contains("Authentication code"),
        "{}",
        asked.text()
    );
    let mut wrong = signin.to_vec();
    wrong.push(("code", "000000"));
    let refused = op.submit("/signin", &wrong).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert!(!op.cookies.contains_key(flashmart_web::ACCESS_COOKIE));
    let code = crate::second_factor::current_code(&app, &secret);
    let mut right = signin.to_vec();
    right.push(("code", &code));
    let res = op.submit("/signin", &right).await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.text());
    assert_eq!(location(&res), "/admin");
    assert_eq!(op.get("/admin").await.status, StatusCode::OK);
}

#[tokio::test]
async fn an_admin_changes_a_role_and_that_accounts_sessions_end() {
    let app = app().await;
    let (old_token, _) = app
        .customer("to-promote@example.com", "promote me please")
        .await;
    let id = app.user_id(&old_token).await;
    let admin_token = app
        .staff("root@example.com", "admin password", Role::Admin)
        .await;
    let mut admin = Browser::new(&app);
    admin.sign_in("root@example.com", "admin password").await;
    let users = admin.get("/admin/users").await.text();
    assert!(
        users.contains("Change role") && users.contains("(you)"),
        "{users}"
    );
    let res = admin
        .submit(
            &format!("/admin/users/{}/role", id.as_uuid()),
            &[("role", "operator")],
        )
        .await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.text());
    // The token with the old role is refused; a new session has the new one.
    let refused = app.get("/api/v1/users/me").bearer(&old_token).send().await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    let (token, _) = app
        .login("to-promote@example.com", "promote me please")
        .await;
    let me = app.get("/api/v1/users/me").bearer(&token).send().await;
    assert_eq!(me.data()["role"], "operator");

    // The API does the same; nobody changes their own role.
    let back = app
        .req(
            axum::http::Method::PUT,
            &format!("/api/v1/admin/users/{}/role", id.as_uuid()),
        )
        .bearer(&admin_token)
        .json(&json!({"role": "customer"}))
        .send()
        .await;
    assert_eq!(back.data()["role"], "customer");
    let own = app.user_id(&admin_token).await;
    app.req(
        axum::http::Method::PUT,
        &format!("/api/v1/admin/users/{}/role", own.as_uuid()),
    )
    .bearer(&admin_token)
    .json(&json!({"role": "customer"}))
    .send()
    .await
    .assert_error(StatusCode::CONFLICT, 409);
    app.req(
        axum::http::Method::PUT,
        &format!("/api/v1/admin/users/{}/role", id.as_uuid()),
    )
    .bearer(&token)
    .json(&json!({"role": "admin"}))
    .send()
    .await
    .assert_error(StatusCode::UNAUTHORIZED, 10003);
}

#[tokio::test]
async fn the_console_edits_products_with_pictures_and_sells_them_in_sales_and_schedules() {
    use base64::Engine as _;
    let app = app().await;
    app.staff("ops@example.com", "operator password", Role::Operator)
        .await;
    let mut op = Browser::new(&app);
    op.sign_in("ops@example.com", "operator password").await;
    let png = base64::engine::general_purpose::STANDARD
        .decode(crate::catalog::PNG_B64)
        .unwrap();
    let csrf = op.csrf();
    let form = |fields: &[(&str, &str)], picture: bool| {
        let mut parts: Vec<(&str, Option<&str>, &str, &[u8])> = fields
            .iter()
            .map(|(k, v)| (*k, None, "text/plain", v.as_bytes()))
            .collect();
        if picture {
            parts.push(("images", Some("lamp.png"), "image/png", &png));
        }
        crate::catalog::multipart_parts(&parts)
    };
    let post = async |b: &mut Browser<'_>, path: &str, (ct, body): (String, Vec<u8>)| {
        let res = b
            .app
            .post(path)
            .header("cookie", &b.cookie_header())
            .raw(&ct, body)
            .send()
            .await;
        b.keep(&res);
        res
    };
    let fields = [
        ("csrf", csrf.as_str()),
        ("name", "Desk Lamp"),
        ("price", "12.50"),
        ("stock", "10"),
        ("category", "lamps"),
        ("active", "1"),
    ];
    // A price that is no price is shown back with the form.
    let mut bad = fields.to_vec();
    bad[2] = ("price", "twelve");
    let res = post(&mut op, "/admin/products/new", form(&bad, false)).await;
    assert_eq!(res.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(res.text().contains("price: a price such as 19.99"));
    // Without this browser's token, nothing is made.
    let mut forged = fields.to_vec();
    forged[0] = ("csrf", "0123456789abcdef0123456789abcdef");
    let res = post(&mut op, "/admin/products/new", form(&forged, true)).await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);

    let res = post(&mut op, "/admin/products/new", form(&fields, true)).await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.text());
    let page = location(&res);
    let id = page
        .trim_start_matches("/admin/products/")
        .trim_end_matches("?saved=1")
        .to_owned();
    let public = app
        .get(&format!("/api/v1/products/{id}"))
        .send()
        .await
        .data();
    assert_eq!(public["price_cents"], 1250);
    let picture = public["images"][0].as_str().unwrap().to_owned();
    assert!(picture.starts_with("/uploads/"), "{picture}");
    assert_eq!(app.get(&picture).send().await.status, StatusCode::OK);

    // Edited: renamed, the picture kept, off sale.
    let edit = [
        ("csrf", csrf.as_str()),
        ("name", "Desk Lamp II"),
        ("price", "13"),
        ("stock", "9"),
        ("category", ""),
        ("keep", picture.as_str()),
    ];
    let res = post(
        &mut op,
        &format!("/admin/products/{id}"),
        form(&edit, false),
    )
    .await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.text());
    assert_eq!(
        app.get(&format!("/api/v1/products/{id}"))
            .send()
            .await
            .status,
        StatusCode::NOT_FOUND,
        "off sale"
    );
    let mut on_sale = edit.to_vec();
    on_sale.push(("active", "1"));
    post(
        &mut op,
        &format!("/admin/products/{id}"),
        form(&on_sale, false),
    )
    .await;
    let public = app
        .get(&format!("/api/v1/products/{id}"))
        .send()
        .await
        .data();
    assert_eq!(public["name"], "Desk Lamp II");
    assert_eq!(public["price_cents"], 1300);
    assert_eq!(public["images"][0], picture.as_str());

    // A sale of 4 of its units at 5.00, made from the catalogue.
    let res = op
        .submit(
            "/admin/flash-sales/new",
            &[
                ("name", "Lamp hour"),
                ("minutes", "60"),
                ("per_user_limit", "1"),
                ("pay_minutes", "10"),
                ("items", "products"),
                ("product_1", &id),
                ("units_1", "4"),
                ("sale_price_1", "5.00"),
            ],
        )
        .await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.text());
    let live = op.get(&location(&res)).await.text();
    assert!(live.contains("4 left"), "{live}");
    let public = app
        .get(&format!("/api/v1/products/{id}"))
        .send()
        .await
        .data();
    assert_eq!(
        public["stock"], 5,
        "the sale's units left the product's stock"
    );
    // More units than the product has: the form says so.
    let res = op
        .submit(
            "/admin/flash-sales/new",
            &[
                ("name", "Too many lamps"),
                ("minutes", "60"),
                ("per_user_limit", "1"),
                ("pay_minutes", "10"),
                ("items", "products"),
                ("product_1", &id),
                ("units_1", "50"),
            ],
        )
        .await;
    assert_eq!(res.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(res.text().contains("has only 5 in stock"), "{}", res.text());

    let res = op
        .submit(
            "/admin/schedules",
            &[
                ("name", "Lamps every day"),
                ("recurrence", "daily"),
                ("item_count", "3"),
                ("price", "4.99"),
                ("per_user_limit", "1"),
                ("pay_minutes", "15"),
            ],
        )
        .await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.text());
    assert!(
        op.get("/admin/schedules")
            .await
            .text()
            .contains("Lamps every day")
    );

    let res = op
        .submit(&format!("/admin/products/{id}/delete"), &[])
        .await;
    assert_eq!(res.status, StatusCode::SEE_OTHER);
    assert_eq!(
        app.get(&format!("/api/v1/products/{id}"))
            .send()
            .await
            .status,
        StatusCode::NOT_FOUND
    );
}
