//! Records, images and the ROI boxes drawn into them.

pub mod dicom;
pub mod dicom_scan;
pub mod export;
pub mod files;
pub mod image_io;
pub mod marker;
mod png_fast;
pub mod prepare;
pub mod record;
pub mod roi;
pub mod sample;
pub mod store;
pub mod synthetic;
pub mod synthetic_kind;
