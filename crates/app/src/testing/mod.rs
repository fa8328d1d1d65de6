//! The contracts every storage adapter must meet, as plain async functions over a fresh, empty
//! store, and `port_contracts!`, which turns every one of them into a test against one adapter.
//! Each adapter's suite is that one macro call (see `flashmart_embedded`'s `tests/contract.rs`),
//! so a contract written here reaches every adapter at once and the SQLite and PostgreSQL
//! adapters cannot drift apart in behaviour.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod accounts;
mod audit;
mod catalog;
mod flash_sale;
mod payments;
mod second_factor;
mod shop;
mod webhooks;

pub use accounts::*;
pub use audit::*;
pub use catalog::*;
pub use flash_sale::*;
pub use payments::*;
pub use second_factor::*;
pub use shop::*;
pub use webhooks::*;

/// Every contract of this module as a `#[tokio::test]` against one adapter:
/// `port_contracts!(setup)`, where `setup` is an async fn returning `(guard, Arc<Store>)`, a fresh
/// and empty store and whatever must outlive the test beside it (a temporary directory, a schema
/// dropped afterwards). `port_contracts!(setup; accounts, catalog)` runs only the suites named
/// (`accounts`, `second_factor`, `catalog`, `shop`, `payments`, `flash_sales`, `audit`, `webhooks`), for an adapter
/// that does not yet implement every port. A unit test below fails when a public contract is
/// missing here.
#[macro_export]
macro_rules! port_contracts {
    ($setup:path) => {
        $crate::port_contracts!(
            $setup; accounts, second_factor, catalog, shop, payments, flash_sales, audit,
            webhooks
        );
    };
    ($setup:path; $($suite:ident),+ $(,)?) => {
        $($crate::port_contracts!(@suite $suite $setup);)+
    };
    (@suite accounts $setup:path) => {
        $crate::port_contracts!(@by_ref $setup;
            users_round_trip,
            email_is_unique,
            users_list_newest_first,
            refresh_rotation,
            an_expired_refresh_token_changes_nothing,
            password_change_revokes_every_session,
            role_change_revokes_the_users_sessions,
            revoking_twice_keeps_the_first_time,
            buyers_are_inserted_with_sessions,
        );

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn racing_rotations_rotate_once() {
            let (_guard, store) = $setup().await;
            $crate::testing::racing_rotations_rotate_once(
                store as ::std::sync::Arc<dyn $crate::ports::AccountStore>,
            )
            .await;
        }
    };
    (@suite audit $setup:path) => {
        $crate::port_contracts!(@by_ref $setup;
            audit_entries_are_written_with_their_change,
        );
    };
    (@suite webhooks $setup:path) => {
        $crate::port_contracts!(@by_ref $setup;
            webhook_deliveries_follow_their_schedule,
        );
    };
    (@suite second_factor $setup:path) => {
        $crate::port_contracts!(@by_ref $setup;
            a_secret_waits_for_its_first_code,
            no_step_or_recovery_code_works_twice,
        );
    };
    (@suite catalog $setup:path) => {
        $crate::port_contracts!(@by_ref $setup;
            products_round_trip,
            products_search_filter_and_page,
        );
    };
    (@suite shop $setup:path) => {
        $crate::port_contracts!(@by_ref $setup;
            addresses_keep_one_default,
            checkout_takes_all_or_nothing,
            unpaid_orders_expire_and_restock,
            checkout_caps_open_orders_and_units,
            checkout_refuses_totals_that_do_not_fit,
            coupons_are_counted_once_per_use,
        );

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn racing_for_the_last_unit() {
            let (_guard, store) = $setup().await;
            $crate::testing::racing_for_the_last_unit(store).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn racing_for_a_coupons_last_use() {
            let (_guard, store) = $setup().await;
            $crate::testing::racing_for_a_coupons_last_use(store).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn one_buyers_parallel_checkouts_make_one_order() {
            let (_guard, store) = $setup().await;
            $crate::testing::one_buyers_parallel_checkouts_make_one_order(store).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn checkouts_sharing_products_all_go_through() {
            let (_guard, store) = $setup().await;
            $crate::testing::checkouts_sharing_products_all_go_through(store).await;
        }
    };
    (@suite payments $setup:path) => {
        $crate::port_contracts!(@by_ref $setup;
            payments_round_trip,
            a_notification_is_applied_once,
            a_failed_payment_leaves_the_order_awaiting_payment,
            paid_after_the_order_ended_records_the_refund_owed,
            refunds_take_turns_and_settle_once,
            unanswered_refunds_wait_and_are_listed,
            open_payments_of_ended_orders_are_swept,
        );
    };
    (@suite flash_sales $setup:path) => {
        $crate::port_contracts!(@by_ref $setup;
            sales_round_trip,
            one_sale_per_schedule_slot,
            sales_list_by_phase,
            journal_makes_reservations_durable,
            a_failed_batch_leaves_nothing,
            purchases_by_code,
            decided_purchases_are_recorded,
            expiry_releases_stock,
            large_batches_are_written_whole,
            flash_sale_orders_follow_their_reservation,
        );

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn payments_racing_expiry_settle_each_order_once() {
            let (_guard, store) = $setup().await;
            $crate::testing::payments_racing_expiry_settle_each_order_once(store).await;
        }

        #[tokio::test]
        async fn flash_sale_orders_are_listed_for_their_buyer() {
            let (_guard, store) = $setup().await;
            // Without any upkeep of the adapter's own: the list is right before it runs too.
            $crate::testing::flash_sale_orders_are_listed_for_their_buyer(store.as_ref(), || async {
                false
            })
            .await;
        }
    };
    (@by_ref $setup:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                let (_guard, store) = $setup().await;
                $crate::testing::$name(store.as_ref()).await;
            }
        )*
    };
}

/// An audit entry for a contract's audited write; the `audit` suite checks what is stored.
pub(crate) fn audit_entry(action: &str) -> crate::audit::AuditEntry {
    crate::audit::AuditEntry::new(
        crate::audit::Actor::Command("contract"),
        accounts::t0(),
        action,
        "-",
        None,
        None,
    )
}

#[cfg(test)]
mod tests {
    /// Every `pub async fn` of the suites is run by `port_contracts!`, so no adapter can miss
    /// one.
    #[test]
    fn every_contract_is_in_port_contracts() {
        let suites = [
            include_str!("accounts.rs"),
            include_str!("audit.rs"),
            include_str!("catalog.rs"),
            include_str!("flash_sale.rs"),
            include_str!("payments.rs"),
            include_str!("second_factor.rs"),
            include_str!("shop.rs"),
            include_str!("webhooks.rs"),
        ];
        let this = include_str!("mod.rs");
        assert_eq!(
            this.lines()
                .filter(|l| l.starts_with("mod ") && l.ends_with(';'))
                .count(),
            suites.len(),
            "every suite file is read here"
        );
        let start = this.find("macro_rules! port_contracts").unwrap();
        let end = this.find("#[cfg(test)]").unwrap();
        let called = &this[start..end];
        let mut contracts = 0;
        for suite in suites {
            for line in suite.lines() {
                let Some(rest) = line.strip_prefix("pub async fn ") else {
                    continue;
                };
                let name = rest.split(['(', '<']).next().unwrap();
                contracts += 1;
                assert!(
                    called.contains(&format!(" {name},\n"))
                        || called.contains(&format!("async fn {name}()")),
                    "the contract {name} is not in port_contracts!"
                );
            }
        }
        assert!(contracts >= 30, "found only {contracts} contracts");
    }
}
