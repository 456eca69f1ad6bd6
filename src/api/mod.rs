//! The signing service.
