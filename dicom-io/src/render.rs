//! Rendering a frame into a consumer image (PS3.18 8.3.5.1 and 8.7.4), as
//! the WADO-RS rendered and thumbnail resources serve it.
//!
//! Grayscale frames go through the Modality LUT and the VOI of the file
//! (its VOI LUT, else its first window, else the frame's min-max) or the
//! `window` asked for, MONOCHROME1 inverted so that white is high;
//! colour frames (RGB, and YBR, which decoding converts to RGB) are scaled
//! from Bits Stored to 8 bits. Palette colour is not rendered. A region of
//! the frame may be cut (negative sizes flip it) and the result scaled to
//! fit a viewport, keeping its aspect ratio (pixels are treated as square:
//! Pixel Aspect Ratio and unequal Pixel Spacing are not corrected). The
//! output has 8 bits per channel, as PS3.18 requires.

use std::io::Cursor;
use std::path::Path;

use crate::error::{Error, Result};
use crate::file::DicomFile;
use crate::lut::{PixelOptions, VoiSelection, WindowFunction};
use crate::pixels::Photometric;

/// A region of the source frame, in its pixels (PS3.18 8.3.5.1.3):
/// top-left corner and size; a negative size flips that axis.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Region {
    /// Left column.
    pub x: f64,
    /// Top row.
    pub y: f64,
    /// Width (negative: flipped left-right).
    pub width: f64,
    /// Height (negative: flipped top-bottom).
    pub height: f64,
}

impl Region {
    /// The region's left, top, right and bottom edges (sizes flipped back
    /// to positive), when it lies within a `columns` × `rows` frame and
    /// covers at least one pixel each way.
    pub fn bounds(&self, columns: f64, rows: f64) -> Option<(f64, f64, f64, f64)> {
        let (x0, x1) = ordered(self.x, self.x + self.width);
        let (y0, y1) = ordered(self.y, self.y + self.height);
        (x0 >= 0.0 && y0 >= 0.0 && x1 <= columns && y1 <= rows && x1 - x0 >= 1.0 && y1 - y0 >= 1.0)
            .then_some((x0, y0, x1, y1))
    }
}

/// What to render.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RenderParams {
    /// A window to apply instead of the file's VOI: center, width,
    /// function.
    pub window: Option<(f64, f64, WindowFunction)>,
    /// Viewport width and height: the output fits in it.
    pub viewport: Option<(u32, u32)>,
    /// Part of the frame to render (all of it when `None`).
    pub region: Option<Region>,
    /// Only shrink to the viewport, never enlarge (thumbnails).
    pub shrink_only: bool,
}

/// An 8-bit image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// Columns.
    pub width: u32,
    /// Rows.
    pub height: u32,
    /// Three interleaved channels (RGB) when true, else one (grey).
    pub colour: bool,
    /// Pixels, row by row.
    pub data: Vec<u8>,
}

/// Encodings of a rendered image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    /// `image/jpeg`: baseline, 8-bit Huffman (ISO/IEC 10918-1), of this
    /// quality (1–100).
    Jpeg(u8),
    /// `image/png`: lossless.
    Png,
}

impl ImageFormat {
    /// Its media type.
    pub fn media_type(self) -> &'static str {
        match self {
            Self::Jpeg(_) => "image/jpeg",
            Self::Png => "image/png",
        }
    }
}

/// Largest side a viewport may ask for.
pub const MAX_VIEWPORT: u32 = 4096;

/// Render frame `frame` (from 1) of the instance at `path`.
///
/// Errors: [`Error::NoSuchFrame`] beyond Number of Frames or without pixel
/// data, [`Error::UnsupportedPixelData`] for palette colour or a region
/// outside the frame, and the decoding errors of [`DicomFile::decode`]. A
/// decoder that panics is an error like any other.
pub fn render_frame(path: &Path, frame: u32, params: &RenderParams) -> Result<Rendered> {
    render_frames(path, &[frame], params).map(|mut images| images.remove(0))
}

/// Render the frames `frames` (from 1, in that order) of the instance at
/// `path`, decoding its pixel data once. Errors as [`render_frame`]; an
/// empty list renders nothing.
pub fn render_frames(path: &Path, frames: &[u32], params: &RenderParams) -> Result<Vec<Rendered>> {
    if frames.is_empty() {
        return Ok(Vec::new());
    }
    std::panic::catch_unwind(|| render(path, frames, params)).unwrap_or_else(|panic| {
        Err(Error::DecodePixelData {
            path: path.to_path_buf(),
            sop_instance_uid: "unknown".into(),
            reason: format!("decoder panicked: {}", crate::pixels::panic_message(&panic)),
        })
    })
}

fn render(path: &Path, asked: &[u32], params: &RenderParams) -> Result<Vec<Rendered>> {
    let file = DicomFile::open(path)?;
    let frames = crate::frames::frame_count(&file)?;
    if let Some(&frame) = asked.iter().find(|&&f| f == 0 || f > frames) {
        return Err(Error::NoSuchFrame {
            sop_instance_uid: file.header().sop_instance_uid.clone(),
            frame,
            frames,
        });
    }
    let unsupported = |reason: String| Error::UnsupportedPixelData {
        path: path.to_path_buf(),
        sop_instance_uid: file.header().sop_instance_uid.clone(),
        reason,
    };
    let voi = match params.window {
        Some((center, width, function)) => VoiSelection::Window {
            center,
            width,
            function,
        },
        None => VoiSelection::FromFile,
    };
    let pixels = file.decode(&PixelOptions::with_voi(voi))?;
    asked
        .iter()
        .map(|&frame| {
            let samples = pixels.frame(frame as usize - 1).ok_or_else(|| {
                unsupported(format!("frame {frame} not in the decoded pixel data"))
            })?;
            one(&pixels, samples, params).map_err(unsupported)
        })
        .collect()
}

/// One decoded frame to 8 bits, cut and fitted.
fn one(
    pixels: &crate::pixels::PixelArray,
    samples: &[f32],
    params: &RenderParams,
) -> std::result::Result<Rendered, String> {
    let (colour, data): (bool, Vec<u8>) = match pixels.photometric {
        Photometric::Monochrome1 | Photometric::Monochrome2 => (
            false,
            samples
                .iter()
                .map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8)
                .collect(),
        ),
        Photometric::Rgb => {
            let max = 2f32.powi(i32::from(pixels.bits_stored.clamp(1, 16))) - 1.0;
            (
                true,
                samples
                    .iter()
                    .map(|v| (v / max * 255.0).round().clamp(0.0, 255.0) as u8)
                    .collect(),
            )
        }
        _ => return Err("palette colour images are not rendered".into()),
    };
    let (width, height) = (
        u32::try_from(pixels.columns).map_err(|_| "too many columns".to_string())?,
        u32::try_from(pixels.rows).map_err(|_| "too many rows".to_string())?,
    );
    let image = Rendered {
        width,
        height,
        colour,
        data,
    };
    let image = match params.region {
        Some(region) => crop(image, region)?,
        None => image,
    };
    Ok(match params.viewport {
        Some((vw, vh)) if params.shrink_only && image.width <= vw && image.height <= vh => image,
        Some((vw, vh)) => fit(image, vw, vh),
        None => image,
    })
}

/// Cut `region` out of `image`, flipping where a size is negative.
fn crop(image: Rendered, region: Region) -> std::result::Result<Rendered, String> {
    let Some((x0, y0, x1, y1)) = region.bounds(f64::from(image.width), f64::from(image.height))
    else {
        return Err(format!(
            "region {},{},{},{} is not within the {}x{} frame",
            region.x, region.y, region.width, region.height, image.width, image.height
        ));
    };
    let (cx, cy) = (x0.floor() as u32, y0.floor() as u32);
    let (cw, ch) = (
        (x1.ceil() as u32 - cx).max(1),
        (y1.ceil() as u32 - cy).max(1),
    );
    let channels = if image.colour { 3 } else { 1 };
    let mut data = Vec::with_capacity((cw * ch) as usize * channels);
    for row in 0..ch {
        let sy = if region.height < 0.0 {
            cy + ch - 1 - row
        } else {
            cy + row
        };
        for col in 0..cw {
            let sx = if region.width < 0.0 {
                cx + cw - 1 - col
            } else {
                cx + col
            };
            let at = ((sy * image.width + sx) as usize) * channels;
            data.extend_from_slice(&image.data[at..at + channels]);
        }
    }
    Ok(Rendered {
        width: cw,
        height: ch,
        colour: image.colour,
        data,
    })
}

fn ordered(a: f64, b: f64) -> (f64, f64) {
    if a <= b { (a, b) } else { (b, a) }
}

/// Scale `image` to the largest size within `vw` × `vh` that keeps its
/// aspect ratio (up or down; Catmull-Rom down, triangle up).
fn fit(image: Rendered, vw: u32, vh: u32) -> Rendered {
    let scale =
        (f64::from(vw) / f64::from(image.width)).min(f64::from(vh) / f64::from(image.height));
    let (tw, th) = (
        ((f64::from(image.width) * scale).round() as u32).clamp(1, vw.max(1)),
        ((f64::from(image.height) * scale).round() as u32).clamp(1, vh.max(1)),
    );
    if (tw, th) == (image.width, image.height) {
        return image;
    }
    let filter = if scale < 1.0 {
        image::imageops::FilterType::CatmullRom
    } else {
        image::imageops::FilterType::Triangle
    };
    let data = if image.colour {
        image::RgbImage::from_raw(image.width, image.height, image.data)
            .map(|i| image::imageops::resize(&i, tw, th, filter).into_raw())
    } else {
        image::GrayImage::from_raw(image.width, image.height, image.data)
            .map(|i| image::imageops::resize(&i, tw, th, filter).into_raw())
    };
    Rendered {
        width: tw,
        height: th,
        colour: image.colour,
        data: data.unwrap_or_default(),
    }
}

/// Encode a rendered image.
pub fn encode(image: &Rendered, format: ImageFormat) -> std::result::Result<Vec<u8>, String> {
    let colour = if image.colour {
        image::ExtendedColorType::Rgb8
    } else {
        image::ExtendedColorType::L8
    };
    let mut out = Vec::new();
    let written = match format {
        ImageFormat::Jpeg(quality) => image::codecs::jpeg::JpegEncoder::new_with_quality(
            &mut Cursor::new(&mut out),
            quality.clamp(1, 100),
        )
        .encode(&image.data, image.width, image.height, colour),
        ImageFormat::Png => {
            use image::ImageEncoder;
            image::codecs::png::PngEncoder::new(&mut Cursor::new(&mut out)).write_image(
                &image.data,
                image.width,
                image.height,
                colour,
            )
        }
    };
    written.map_err(|e| e.to_string())?;
    Ok(out)
}

/// Parse the `window` query parameter (`center,width[,function]`, the
/// function `linear`, `linear-exact` or `sigmoid`; PS3.18 8.3.5.1.4). The
/// width is at least 1 for `linear` and above 0 for the others (PS3.3
/// C.11.2.1.2).
pub fn parse_window(text: &str) -> Option<(f64, f64, WindowFunction)> {
    let parts: Vec<&str> = text.split(',').map(str::trim).collect();
    if !(2..=3).contains(&parts.len()) {
        return None;
    }
    let center: f64 = parts[0].parse().ok().filter(|c: &f64| c.is_finite())?;
    let width: f64 = parts[1]
        .parse()
        .ok()
        .filter(|w: &f64| w.is_finite() && *w > 0.0)?;
    let function = match parts.get(2).map(|f| f.to_ascii_lowercase()) {
        None => WindowFunction::Linear,
        Some(f) => match f.as_str() {
            "linear" => WindowFunction::Linear,
            "linear-exact" => WindowFunction::LinearExact,
            "sigmoid" => WindowFunction::Sigmoid,
            _ => return None,
        },
    };
    (function != WindowFunction::Linear || width >= 1.0).then_some((center, width, function))
}

/// Parse the `viewport` query parameter (`vw,vh[,sx,sy,sw,sh]`; PS3.18
/// 8.3.5.1.3): the viewport, at most [`MAX_VIEWPORT`] on a side, and the
/// region when given.
pub fn parse_viewport(text: &str) -> Option<((u32, u32), Option<Region>)> {
    let parts: Vec<&str> = text.split(',').map(str::trim).collect();
    if parts.len() != 2 && parts.len() != 6 {
        return None;
    }
    let side = |s: &str| {
        s.parse::<u32>()
            .ok()
            .filter(|&v| (1..=MAX_VIEWPORT).contains(&v))
    };
    let viewport = (side(parts[0])?, side(parts[1])?);
    if parts.len() == 2 {
        return Some((viewport, None));
    }
    let number = |s: &str| s.parse::<f64>().ok().filter(|v| v.is_finite());
    let region = Region {
        x: number(parts[2])?,
        y: number(parts[3])?,
        width: number(parts[4])?,
        height: number(parts[5])?,
    };
    Some((viewport, Some(region)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grey(width: u32, height: u32) -> Rendered {
        Rendered {
            width,
            height,
            colour: false,
            data: (0..width * height).map(|v| v as u8).collect(),
        }
    }

    #[test]
    fn regions_cut_and_flip() {
        let image = grey(4, 3);
        let cut = crop(
            image.clone(),
            Region {
                x: 1.0,
                y: 1.0,
                width: 2.0,
                height: 2.0,
            },
        )
        .unwrap();
        assert_eq!((cut.width, cut.height), (2, 2));
        assert_eq!(cut.data, vec![5, 6, 9, 10]);
        let flipped = crop(
            image.clone(),
            Region {
                x: 4.0,
                y: 0.0,
                width: -4.0,
                height: 1.0,
            },
        )
        .unwrap();
        assert_eq!(flipped.data, vec![3, 2, 1, 0]);
        assert!(
            crop(
                image,
                Region {
                    x: 3.0,
                    y: 0.0,
                    width: 2.0,
                    height: 1.0,
                }
            )
            .is_err()
        );
    }

    #[test]
    fn viewports_keep_the_aspect_ratio() {
        let wide = fit(grey(200, 100), 64, 64);
        assert_eq!((wide.width, wide.height), (64, 32));
        let up = fit(grey(10, 20), 100, 100);
        assert_eq!((up.width, up.height), (50, 100));
        assert_eq!(up.data.len(), 50 * 100);
    }

    #[test]
    fn query_values() {
        assert_eq!(
            parse_window("40,400"),
            Some((40.0, 400.0, WindowFunction::Linear))
        );
        assert_eq!(
            parse_window("-600,1500,SIGMOID"),
            Some((-600.0, 1500.0, WindowFunction::Sigmoid))
        );
        assert_eq!(
            parse_window("40,0.5,linear-exact"),
            Some((40.0, 0.5, WindowFunction::LinearExact))
        );
        for bad in [
            "40",
            "40,0",
            "40,0.5",
            "a,1",
            "40,400,gamma",
            "1,2,3,4",
            "NaN,10",
        ] {
            assert_eq!(parse_window(bad), None, "{bad}");
        }
        assert_eq!(parse_viewport("128,128"), Some(((128, 128), None)));
        assert_eq!(
            parse_viewport("64,32,0,0,-10,5"),
            Some((
                (64, 32),
                Some(Region {
                    x: 0.0,
                    y: 0.0,
                    width: -10.0,
                    height: 5.0
                })
            ))
        );
        for bad in ["0,10", "10", "10,10,1", "5000,10", "10,10,a,0,1,1"] {
            assert_eq!(parse_viewport(bad), None, "{bad}");
        }
    }

    #[test]
    fn encodings_decode_back() {
        let image = grey(16, 8);
        let png = encode(&image, ImageFormat::Png).unwrap();
        let back = image::load_from_memory(&png).unwrap().to_luma8();
        assert_eq!(back.into_raw(), image.data);
        let jpeg = encode(&image, ImageFormat::Jpeg(90)).unwrap();
        assert_eq!(&jpeg[..2], &[0xFF, 0xD8]);
        let back = image::load_from_memory(&jpeg).unwrap().to_luma8();
        assert_eq!((back.width(), back.height()), (16, 8));
    }
}
