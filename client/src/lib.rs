//! edgestream's browser client.
