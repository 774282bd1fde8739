//! Mounts arbitrary bytes as a store image: mount, check and a few writes must never panic
//! or hang, whatever the image holds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use provbox::store::Store;
use provbox::store::backend::sim::SimFlash;
use provbox::store::check::check;

fn exercise<const SECTOR: usize>(image: &[u8]) {
    // Pad to at least four sectors so that the geometry is valid and the bytes matter.
    let mut image = image.to_vec();
    image.resize(image.len().max(4 * SECTOR).div_ceil(SECTOR) * SECTOR, 0xFF);
    let flash = SimFlash::<SECTOR>::from_image(image);
    let _ = check(flash.clone());
    if let Ok(mut store) = Store::mount(flash) {
        for i in 0..8u8 {
            let _ = store.put(&[b'k', i % 3], &[i; 40]);
            let _ = store.delete(&[b'k', (i + 1) % 3]);
        }
        let _ = store.compact();
        let _ = Store::mount(store.into_flash());
    }
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks the sector size; small sectors give the fuzzer more structure.
    match data.split_first() {
        Some((selector, image)) if selector % 2 == 0 => exercise::<512>(image),
        Some((_, image)) => exercise::<4096>(image),
        None => {}
    }
});
