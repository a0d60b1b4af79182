//! edgestream's Cloudflare Worker.
