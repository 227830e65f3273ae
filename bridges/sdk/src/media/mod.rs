//! Media that travels as files (SPEC section 5, "Media"): fetching an agent's URL safely.
//! The signed media links, the uploads and the downloads per platform are still to come (issue
//! 10).

pub mod fetch;
