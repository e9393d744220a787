//! gantry-webhook
