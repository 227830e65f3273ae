//! Media that travels as files (SPEC section 5, "Media"): fetching an agent's URL safely
//! ([`fetch`]), and the signed links agents get for people's files ([`link`]). Not built yet
//! (issue 10): the `/media/{token}` endpoint that serves a link, the platforms' uploads and
//! downloads, and the content blocks that carry both.

pub mod fetch;
pub mod link;
