;;; gc-keep.scm -- what the daemon's `--gc-keep-derivations' and
;;; `--gc-keep-outputs' options keep alive: a built output rooted in
;;; gcroots (is its `.drv' kept?), a `.drv' rooted in gcroots (are its
;;; outputs kept?), before and after a collection by `guix gc'.
;;;
;;; Usage: gc-keep.scm TRANSCRIPT MODE, where MODE names the daemon's
;;; options: `default' (keep derivations, not outputs), `keep-outputs',
;;; `no-keep-derivations', `keep-outputs-no-derivations'.

(load (string-append (dirname (current-filename)) "/gc-common.scm"))

(define mode
  (match (script-arguments)
    ((mode) mode)
    (_ (error "usage: gc-keep.scm TRANSCRIPT MODE"))))
(define keep-outputs? (member mode '("keep-outputs" "keep-outputs-no-derivations")))
(define keep-derivations? (member mode '("default" "keep-outputs")))

(define maker (connect))
(set-build-options maker #:use-substitutes? #f)
(define bb (add-busybox! maker))
(define src (add-text-to-store maker "src" "source text\n" '()))
(define junk (add-text-to-store maker "junk" "unrooted\n" '()))
;; D: built, its output (rooted) refers to the source.
(define d
  (sh-derivation maker bb "with-output-root"
                 "mkdir $out; cat $src > $out/v; echo $src > $out/ref"
                 #:sources (list src)
                 #:env-vars `(("src" . ,src))))
;; E: built, its `.drv' is rooted.
(define e (sh-derivation maker bb "with-drv-root" "echo e > $out"))
;; One at a time: the order of independent builds is the daemon's choice.
(expect-built! "build d" maker (list d))
(expect-built! "build e" maker (list e))

(define items
  `(("busybox" . ,bb) ("src" . ,src) ("junk" . ,junk)
    ("d.drv" . ,(drv-file d)) ("d.out" . ,(derivation->output-path d))
    ("e.drv" . ,(drv-file e)) ("e.out" . ,(derivation->output-path e))))
(record! "items" items)

(mkdir-p (gcroots-dir))
(symlink (derivation->output-path d) (string-append (gcroots-dir) "/d-out"))
(symlink (drv-file e) (string-append (gcroots-dir) "/e-drv"))
(close-connection maker)

(define s (connect))
(wait-until "the maker's temporary roots to go"
            (lambda () (member junk (dead-paths s))))

(define (names paths)
  (filter-map (match-lambda
                ((name . path) (and (member path paths) name)))
              items))

(define expected-live
  (append '("busybox" "src" "d.out" "e.drv")
          (if keep-derivations? '("d.drv") '())
          (if keep-outputs? '("e.out") '())))

(let ((live (expect-ok! "live items" (lambda () (names (live-paths s)))
                        #:encode list->vector))
      (dead (expect-ok! "dead items" (lambda () (names (dead-paths s)))
                        #:encode list->vector)))
  (check! "live items" (equal? (sort live string<?) (sort expected-live string<?))
          live)
  (check! "dead items"
          (equal? (sort dead string<?)
                  (sort (remove (cut member <> expected-live) (map car items))
                        string<?))
          dead))

(let ((r (gc-step! "guix gc" )))
  (check! "guix gc: ok" (zero? (gc-status r)) r))
(record-items! "after guix gc" s items)
(let-values (((kept gone) (partition (match-lambda
                                       ((name . _) (member name expected-live)))
                                     items)))
  (check-present! "after guix gc" s kept)
  (check-gone! "after guix gc" s gone))

(step-alive! "alive at the end" s #t)
(finish!)
