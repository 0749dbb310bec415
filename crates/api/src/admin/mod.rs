//! The admin API, `/admin/...`, behind the admin token.

pub mod backups;
pub mod tenants;
