;;; gc-verify.scm -- `guix gc --verify' and `guix gc --optimize' on a
;;; daemon started with `--disable-deduplication': a pristine store
;;; verifies; identical files of two items are hard-linked by --optimize
;;; (and were not before); a store file modified behind the daemon's back
;;; (as root: made writable, rewritten, made read-only again) is reported
;;; by `--verify=contents' and not by `--verify'; an item whose file was
;;; removed is dropped from the database by `--verify'.

(load (string-append (dirname (current-filename)) "/gc-common.scm"))

(define s (connect))
(define big (pattern-bytes 70000 11))
(define dup-a
  (add-to-store s "dup-a" #t "sha256"
                (make-tree "dup-a" `(directory ("data" (regular ,big))
                                               ("a" (regular ,(string->utf8 "a\n")))))))
(define dup-b
  (add-to-store s "dup-b" #t "sha256"
                (make-tree "dup-b" `(directory ("data" (regular ,big))
                                               ("b" (regular ,(string->utf8 "b\n")))))))
(define tampered
  (add-to-store s "tampered" #t "sha256"
                (make-tree "tampered"
                           `(directory ("file" (regular ,(pattern-bytes 3000 5)))))))
(define vanished (add-text-to-store s "vanished" "soon gone\n" '()))
(define items `(("dup-a" . ,dup-a) ("dup-b" . ,dup-b) ("tampered" . ,tampered)
                ("vanished" . ,vanished)))
(record! "items" items)
;; Keep everything alive, so that nothing here depends on this session.
(mkdir-p (gcroots-dir))
(for-each (match-lambda
            ((name . path)
             (symlink path (string-append (gcroots-dir) "/" name))))
          items)

(define (inode file) (stat:ino (stat file)))
(define (links file) (stat:nlink (stat file)))
(define data-a (string-append dup-a "/data"))
(define data-b (string-append dup-b "/data"))

(define (record-dedup! label)
  (let ((shared (= (inode data-a) (inode data-b))))
    (record! label `(("shared" . ,shared)
                     ("links-a" . ,(links data-a))
                     ("links-b" . ,(links data-b))))
    shared))

;;; A pristine store.

(let ((r (gc-step! "guix gc --verify, pristine" "--verify")))
  (check! "guix gc --verify, pristine: ok" (zero? (gc-status r)) r))
(let ((r (gc-step! "guix gc --verify=contents, pristine" "--verify=contents")))
  (check! "guix gc --verify=contents, pristine: ok" (zero? (gc-status r)) r))

;;; --optimize.

(check! "without deduplication, identical files are not shared"
        (not (record-dedup! "before --optimize")))
(let ((r (gc-step! "guix gc --optimize" "--optimize")))
  (check! "guix gc --optimize: ok" (zero? (gc-status r)) r))
(check! "--optimize shares identical files" (record-dedup! "after --optimize"))
(check! "--optimize: the items are intact"
        (and (present? s dup-a) (present? s dup-b)))
(let ((r (gc-step! "guix gc --optimize, again" "--optimize")))
  (check! "guix gc --optimize, again: ok" (zero? (gc-status r)) r))
(let ((r (gc-step! "guix gc --verify=contents, after --optimize" "--verify=contents")))
  (check! "guix gc --verify=contents, after --optimize: ok" (zero? (gc-status r)) r))

;;; A modified file.

(define tampered-file (string-append tampered "/file"))
(define registered (path-info-hash (query-path-info s tampered)))
(chmod tampered-file #o644)
(let ((port (open-file tampered-file "r+b")))
  (seek port 100 SEEK_SET)
  (put-bytevector port (string->utf8 "TAMPERED"))
  (close-port port))
(chmod tampered-file #o444)
(check! "the tampered file no longer matches" (not (present? s tampered)))

(let ((r (gc-step! "guix gc --verify, tampered" "--verify")))
  (check! "guix gc --verify, tampered: contents not checked" (zero? (gc-status r)) r))
(let ((r (gc-step! "guix gc --verify=contents, tampered" "--verify=contents")))
  (check! "guix gc --verify=contents, tampered: reported"
          (and (= 1 (gc-status r))
               (string-contains (gc-stderr r)
                                (string-append "path `" tampered "' was modified!"))
               (string-contains (gc-stderr r)
                                (string-append "expected hash `" (hex registered)
                                               "', got `" (hex (sha256 (nar-bytes tampered)))
                                               "'")))
          r))
(check! "the tampered item stays valid, with its registered hash"
        (and (valid-path? s tampered)
             (bytevector=? registered (path-info-hash (query-path-info s tampered)))))

;;; A removed file.

(delete-file vanished)
(let ((r (gc-step! "guix gc --verify, vanished" "--verify")))
  (check! "guix gc --verify, vanished: reported"
          (string-contains (gc-stderr r)
                           (string-append "path `" vanished
                                          "' disappeared, removing from database..."))
          r))
(record-items! "after --verify, vanished" s items)
(check! "the vanished item is no longer valid" (not (valid-path? s vanished)))
(check! "the other items are still valid"
        (every (cut valid-path? s <>) (list dup-a dup-b tampered)))

(step-alive! "alive at the end" s #t)
(finish!)
