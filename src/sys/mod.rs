//! The system module: network namespaces and rtnetlink, in-process.
//!
//! The lab used to run one `ip` process per namespace, link, address, route and rule; this
//! module does the same work with a handful of syscalls per namespace:
//!
//! - [`netns`]: create, delete, list and enter network namespaces, compatible with iproute2
//!   (`ip netns list/exec/del` keep working on them); [`netns::NetnsHandle::run`] visits a
//!   namespace on the current thread, so one builder thread can configure a thousand of them.
//! - [`netlink`]: a synchronous, batched rtnetlink client: links, IPv4 addresses, routes and
//!   policy rules, many requests per `send`, every failure reported with the request written
//!   the way `ip` would take it.
//!
//! - [`memory`]: huge-page memory for the engines' records.
//!
//! Nothing here knows about the lab or the cloud model: callers (the lab's applier) decide what
//! to build; this module only builds it.

pub mod memory;
pub mod netlink;
pub mod netns;
