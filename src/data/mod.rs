//! Records, images and the ROI boxes drawn into them.

pub mod dicom;
pub mod files;
pub mod image_io;
pub mod marker;
pub mod roi;
pub mod sample;
