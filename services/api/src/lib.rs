//! gantry-api
